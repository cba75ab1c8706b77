"""`make mlflow-ui`: MLflow's own UI server over this project's tracking store, opening on the
pipeline's experiment as model training, the promotion gate's verdict and intervals in the runs list.

MLflow 3.17 shows an experiment as a GenAI app or as model training by a switch each browser keeps
(in its local storage); a browser that never chose gets GenAI: empty trace panels, a "Detect Issues"
pop-up, the Assistant opening by itself. So the MLflow page at `/` (the address typed alone) starts
with a few lines that give a browser which never chose the training view and a closed Assistant as
its defaults (a choice made later in the UI stays), and open the experiment's runs list in its saved
view `Promotion gate` (`MlflowRegistry.save_gate_view`): the gate's verdict, each criterion's
difference and interval as columns. Every other request is MLflow's.

This is an MLflow app plugin (entry point `mlflow.app`: `operator-view`, in pyproject.toml), so
`mlflow ui --app-name operator-view` keeps MLflow's own server, stores, workers and security
middleware. Starting, it records the UI's address for the links between the UIs (`ui_links`).

    python -m pipelines.mlflow_ui --host 127.0.0.1 --port 5000
"""

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from pipelines.settings import Settings
from pipelines.ui_links import record_address
from resources.mlflow_registry import landing_route

APP_NAME = "operator-view"
# The UI's own settings (local storage keys of MLflow 3.17's UI, JSON values) a browser gets until
# it chooses otherwise: the training view, the Assistant not opened by itself, no "Detect Issues" tip.
BROWSER_DEFAULTS = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
    "mlflow.detectIssues.guidanceShown_v1": True,
}
LANDING_SCRIPT = """<script>(function () {
  var defaults = %(defaults)s, route = %(route)s;
  for (var key in defaults) if (localStorage.getItem(key) === null) localStorage.setItem(key, defaults[key]);
  if (route && ["", "#", "#/"].indexOf(location.hash) >= 0) location.replace(route);
})();</script>"""
# Headers of MLflow's page that no longer describe it once the script is in.
STALE_HEADERS = (b"content-length", b"etag", b"last-modified", b"cache-control")


def landing_page(page: str, route: str | None) -> str:
    """MLflow's page with the landing script at the end of its head (before MLflow's own code runs:
    that is deferred): the browser defaults, and `route` (MLflow's hash route) opened when the
    address names no page of its own."""
    defaults = {key: json.dumps(value) for key, value in BROWSER_DEFAULTS.items()}
    script = LANDING_SCRIPT % {"defaults": json.dumps(defaults), "route": json.dumps(route)}
    end = page.find("</head>")
    return script + page if end < 0 else page[:end] + script + page[end:]


class OperatorView:
    """MLflow's ASGI app with its page at `/` opening on the training view (`landing_page`)."""

    def __init__(self, app, tracking_uri: str):
        self.app, self.tracking_uri = app, tracking_uri

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        route = await asyncio.to_thread(landing_route, self.tracking_uri)
        start, chunks = {}, []

        async def rewrite(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                body = landing_page(body.decode(), route).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in STALE_HEADERS]
            headers += [(b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


def operator_view():
    """The app MLflow's server runs (`--app-name operator-view`; uvicorn calls this factory)."""
    from mlflow.server.fastapi_app import app

    return OperatorView(app, Settings.from_env().mlflow_tracking_uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MLflow's UI, opening on the training view of the pipeline.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    settings = Settings.from_env().prepare()
    record_address(settings.home, "mlflow", f"http://{args.host}:{args.port}")
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = ["ui", "--backend-store-uri", settings.mlflow_tracking_uri, "--app-name", APP_NAME]
    # In place of this process: make's Ctrl-C and SIGTERM reach MLflow's server as they did before.
    os.execv(mlflow, [mlflow, *command, "--host", args.host, "--port", str(args.port)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
