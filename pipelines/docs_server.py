"""Serve the Data Docs folder (FT_HOME/gx/docs) over http at FT_DOCS_URL, beside `make dev`, and
the links between the UIs (`/go/dagster/...`, `/go/mlflow/...`: `pipelines/ui_links.py`).

Dagster's metadata links each validation's page there: a browser opens an http link from the UI,
where it refuses file:// ones. Static files, and redirects for the links, on the host and port of
FT_DOCS_URL (loopback by default). Started by `make dev`, which gives it the Dagster UI's address to
record (`--dagster-url`); it stops when the process that started it ends.

    python -m pipelines.docs_server --dagster-url http://127.0.0.1:3000
"""

import argparse
import functools
import os
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pipelines.settings import Settings
from pipelines.ui_links import addresses, forward, record_address
from resources.processes import alive

# Seconds between two looks at whether the process that started this one is still there.
PARENT_POLL_SECONDS = 2.0


class DocsAndLinks(SimpleHTTPRequestHandler):
    """The docs folder's files, and a redirect for each link between the UIs to where that UI runs
    when the link is opened (`ui_links.forward`; `settings` None: files only)."""

    def __init__(self, *args, settings: Settings | None = None, **kwargs):
        self.settings = settings
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def send_head(self):
        target = self.link_target()
        if target is None:
            return super().send_head()
        self.send_response(307)  # temporary: the UI may move again
        self.send_header("Location", target)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None

    def link_target(self) -> str | None:
        if self.settings is None:
            return None
        configured = {"dagster": self.settings.dagster_ui_url, "mlflow": self.settings.mlflow_ui_url}
        via = urlsplit(f"//{self.headers.get('Host', '')}").hostname or "127.0.0.1"
        return forward(self.path, addresses(self.settings.home, configured), via)


def serve(folder: str, url: str, settings: Settings | None = None) -> ThreadingHTTPServer:
    """A server of `folder` (and, given `settings`, of the links between the UIs) on the host and
    port of `url`, running in a thread."""
    parts = urlsplit(url)
    handler = functools.partial(DocsAndLinks, directory=folder, settings=settings)
    server = ThreadingHTTPServer((parts.hostname or "127.0.0.1", parts.port or 80), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The Data Docs and the links between the UIs, at FT_DOCS_URL.")
    parser.add_argument("--dagster-url", help="where the Dagster UI started beside this runs, recorded for links")
    args = parser.parse_args(argv)
    settings = Settings.from_env().prepare()
    if args.dagster_url:
        record_address(settings.home, "dagster", args.dagster_url)
    folder = settings.home / "gx" / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "index.html").exists():
        (folder / "index.html").write_text("<!doctype html><p>No validation yet: run make run or land data.</p>")
    server = serve(str(folder), settings.docs_url, settings)
    print(f"Data Docs on {settings.docs_url}/index.html (from {folder})", flush=True)
    parent = os.getppid()
    while alive(parent):  # the starting shell is gone (or a zombie): make dev has ended
        time.sleep(PARENT_POLL_SECONDS)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
