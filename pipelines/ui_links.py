"""Links between the UIs that keep working when a UI is started on another port.

A link written into a run's record (Dagster's metadata to MLflow, MLflow's tags and model card back
to Dagster) names no UI's port. It names the links server (FT_DOCS_URL: `make dev` starts it beside
Dagster, and it serves the Data Docs too) and a path there:

    http://127.0.0.1:3030/go/mlflow/models/ticket-triage/versions/3?workflowType=machine_learning
    http://127.0.0.1:3030/go/dagster/runs/0f1e2d3c-...

When such a link is opened, the server sends the browser on to where that UI runs now: the address
its launcher (`make dev` for Dagster, `make mlflow-ui` for MLflow) recorded under $FT_HOME/ui/ when it
started, or else the configured one (FT_DAGSTER_UI_URL, FT_MLFLOW_UI_URL). MLflow's pages are routes
after '#', which a browser never sends to a server, so `/go/mlflow/<route>` leads to
`<mlflow>/#/<route>`. A link inside one UI's own pages is relative and needs none of this.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

UIS = ("dagster", "mlflow")
PREFIX = "/go/"
# Addresses a server listens on that a browser cannot open: the host the link came through stands in.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def address_file(home: Path, ui: str) -> Path:
    return Path(home) / "ui" / f"{ui}.url"


def record_address(home: Path, ui: str, url: str) -> None:
    """Record that `ui` runs at `url` from now on (written whole, so a reader never sees half)."""
    path = address_file(home, ui)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(url.rstrip("/") + "\n")
    partial.replace(path)


def addresses(home: Path, configured: dict[str, str]) -> dict[str, str]:
    """Where each UI runs now: its recorded address, else its configured one."""
    found = {}
    for ui in UIS:
        path = address_file(home, ui)
        recorded = path.read_text().strip() if path.exists() else ""
        found[ui] = (recorded or configured.get(ui, "")).rstrip("/")
    return found


def forward(target: str, known: dict[str, str], via_host: str = "127.0.0.1") -> str | None:
    """Where the links server's path `target` (path and query) leads: `/go/dagster/<path>` to the
    Dagster UI's `<path>`, `/go/mlflow/<route>` to MLflow's `#/<route>`; None for any other path.
    A UI listening on every interface (0.0.0.0) is reached on `via_host`, the host the link named."""
    if not target.startswith(PREFIX):
        return None
    ui, _, rest = target[len(PREFIX) :].partition("/")
    if ui not in UIS or not known.get(ui):
        return None
    base = urlsplit(known[ui])
    if base.hostname in WILDCARD_HOSTS:
        base = base._replace(netloc=f"{via_host}:{base.port}" if base.port else via_host)
    root = urlunsplit(base).rstrip("/")
    return f"{root}/#/{rest}" if ui == "mlflow" else f"{root}/{rest}"
