"""Serve the Data Docs folder (FT_HOME/gx/docs) over http at FT_DOCS_URL, beside `make dev`.

Dagster's metadata links each validation's page there: a browser opens an http link from the UI,
where it refuses file:// ones. Static files only, on the host and port of FT_DOCS_URL (loopback by
default). Started by `make dev`; it stops when the process that started it ends.

    python -m pipelines.docs_server
"""

import functools
import os
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pipelines.settings import Settings
from resources.processes import alive

# Seconds between two looks at whether the process that started this one is still there.
PARENT_POLL_SECONDS = 2.0


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def serve(folder: str, url: str) -> ThreadingHTTPServer:
    """A server of `folder` on the host and port of `url`, running in a thread."""
    parts = urlsplit(url)
    handler = functools.partial(QuietHandler, directory=folder)
    server = ThreadingHTTPServer((parts.hostname or "127.0.0.1", parts.port or 80), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    settings = Settings.from_env().prepare()
    folder = settings.home / "gx" / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "index.html").exists():
        (folder / "index.html").write_text("<!doctype html><p>No validation yet: run make run or land data.</p>")
    server = serve(str(folder), settings.docs_url)
    print(f"Data Docs on {settings.docs_url}/index.html (from {folder})", flush=True)
    parent = os.getppid()
    while alive(parent):  # the starting shell is gone (or a zombie): make dev has ended
        time.sleep(PARENT_POLL_SECONDS)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
