"""The operator's view in a real browser: `make dev` (Dagster) and `make mlflow-ui` (MLflow) on free
loopback ports over the state of one pipeline run on the tiny model, driven by Playwright through
Debian's chromium. Screenshots go to a temporary folder (printed); the two the README shows are
written to tests/screenshots/.

Chromium is a system package (`apt-get install -y chromium`, done by `make test` when missing:
tests/provision.sh); Playwright's own browser download is never used.
"""

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from pipelines.settings import Settings
from tests.conftest import make_settings, run_all

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent
README_SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Seconds a server may take to answer, and a page to show what is waited for.
SERVER_START, UI_WAIT_MS = 180, 90_000
# Both groups of the asset graph unfolded.
EXPANDED_GROUPS = "global%40global%3Amodel%2Cglobal%40global%3Adata"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def served(target: str, port: int, env: dict, probe: str, log: Path):
    """`make <target> PORT=port` (the venv taken as built) until the block ends; its whole process
    group is stopped then."""
    with log.open("w") as out:
        process = subprocess.Popen(
            ["make", "-o", ".venv/.installed", target, f"PORT={port}"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + SERVER_START
        while not answers(f"http://127.0.0.1:{port}{probe}"):
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"make {target} did not come up on port {port}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, grace: float = 30) -> None:
    """Stop `process` and everything it started (its process group): politely, then for sure.
    Never waits without a limit: `dagster dev` may outlive SIGTERM while its webserver drains."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline:
        process.poll()  # reap make, so that a finished group reads as gone
        try:
            os.killpg(process.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace)


@pytest.fixture(scope="module")
def ui_state(tmp_path_factory, tiny_model_dir):
    """One pipeline run (tiny model, preset smoke, gate lowered so it becomes champion) kept in a
    persistent Dagster instance under a temp FT_HOME, and the environment the UIs run with."""
    home = tmp_path_factory.mktemp("ui_home")
    ports = {"dagster": free_port(), "mlflow": free_port(), "docs": free_port()}
    tests = make_settings(home, str(tiny_model_dir))
    env = {
        **os.environ,
        "FT_HOME": str(home),
        "FT_BASE_MODEL": tests.base_model,
        "FT_PRESET": tests.preset,
        "FT_MODEL_NAME": tests.model_name,
        "MLFLOW_TRACKING_URI": tests.mlflow_tracking_uri,
        "FT_MLFLOW_UI_URL": f"http://127.0.0.1:{ports['mlflow']}",
        "FT_DAGSTER_UI_URL": f"http://127.0.0.1:{ports['dagster']}",
        "FT_DOCS_URL": f"http://127.0.0.1:{ports['docs']}",  # `make dev` serves the Data Docs there
        "DAGSTER_HOME": str(tests.dagster_home),
    }
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    settings = Settings.from_env(env).prepare()
    lower_bar = {"gate": {"min_improvement": -1.0, "max_forgetting_pct": 1000.0, "min_preference_gain": -1.0}}
    instance = dg.DagsterInstance.get()
    defs, _, result, problems = run_all(settings, lower_bar, instance)
    assert result is not None and result.success, problems
    yield {"settings": settings, "env": env, "ports": ports, "instance": instance, "defs": defs, "result": result}
    instance.dispose()
    mp.undo()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; make test does).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    README_SCREENSHOTS.mkdir(exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


def new_page(browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(UI_WAIT_MS)
    return page


def full_name(label: str, names: list[str]) -> str | None:
    """The asset a graph node's label names: zoomed out, Dagster shortens long names to
    'preference_…_model'."""
    pattern = re.compile(".*".join(re.escape(part) for part in label.split("…")))
    matches = [n for n in names if pattern.fullmatch(n)]
    return matches[0] if len(matches) == 1 else None


def wait_for_run(instance, asset: str, after: set[str], timeout: float = 240) -> dg.DagsterRun:
    """The run materializing `asset` that is not in `after`, once it has finished."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = [
            r for r in instance.get_runs() if r.run_id not in after and dg.AssetKey(asset) in (r.asset_selection or ())
        ]
        if runs and runs[0].is_finished:
            return runs[0]
        time.sleep(2)
    pytest.fail("the run launched from the UI did not finish in time")


def test_dagster_ui_shows_the_graph_metadata_quality_and_launches_a_run(ui_state, browser, shots):
    instance, defs = ui_state["instance"], ui_state["defs"]
    assets = sorted(k.path[-1] for k in defs.resolve_asset_graph().get_all_asset_keys())
    log = shots / "dagster.log"
    with served("dev", ui_state["ports"]["dagster"], ui_state["env"], "/server_info", log) as url:
        page = new_page(browser)
        page.goto(f"{url}/asset-groups?expanded={EXPANDED_GROUPS}")
        page.get_by_text("champion_model", exact=True).first.wait_for()
        page.wait_for_timeout(1000)  # the graph's layout settles
        shown = page.locator("[class*='AssetNode_assetName']").all_inner_texts()
        assert sorted(full_name(label, assets) for label in shown) == assets, shown
        page.screenshot(path=shots / "asset_graph.png")
        page.screenshot(path=README_SCREENSHOTS / "asset_graph.png")

        page.goto(f"{url}/assets/registered_model")
        page.get_by_text("mlflow_model_version", exact=True).first.wait_for()
        link = page.locator("a[href*='#/models/test-model/versions/']").first
        assert f":{ui_state['ports']['mlflow']}/" in link.get_attribute("href")
        page.screenshot(path=shots / "registered_model.png", full_page=True)

        page.goto(f"{url}/assets/model_evaluation")
        page.get_by_text("exact_match (primary)").first.scroll_into_view_if_needed()
        page.screenshot(path=shots / "model_evaluation.png")
        page.screenshot(path=README_SCREENSHOTS / "model_evaluation.png")

        # Each drop's quality: the partitions of validated_records, one drop's figures beside the list.
        page.goto(f"{url}/assets/validated_records?view=partitions&partition=2026-01-12")
        for drop in ("2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"):
            page.get_by_text(drop).first.wait_for()
        page.get_by_text("drop_status", exact=True).first.wait_for()
        page.get_by_text("passed: in training").first.wait_for()
        page.get_by_text("rows_raw", exact=True).first.wait_for()
        page.screenshot(path=shots / "validated_records_partitions.png", full_page=True)

        before = {r.run_id for r in instance.get_runs()}
        page.goto(f"{url}/assets/instruction_pairs")
        page.get_by_text("Latest materialization").first.wait_for()
        page.locator("button:has-text('Materialize')").first.click()
        run = wait_for_run(instance, "instruction_pairs", before)
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id} from the UI: {run.status}"
        page.goto(f"{url}/runs/{run.run_id}")
        page.get_by_text("Success").first.wait_for()
        page.screenshot(path=shots / "launched_run.png")


def test_mlflow_ui_shows_the_champion_the_training_view_and_the_comparison(ui_state, browser, shots):
    from mlflow import MlflowClient

    settings = ui_state["settings"]
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(settings.model_name, "champion")
    run = client.get_run(version.run_id)
    experiment = run.info.experiment_id
    view = "?workflowType=machine_learning"
    log = shots / "mlflow.log"
    with served("mlflow-ui", ui_state["ports"]["mlflow"], ui_state["env"], "/health", log) as url:
        page = new_page(browser)
        page.goto(f"{url}/#/models/{settings.model_name}{view}")
        page.get_by_text("@ champion").first.wait_for()
        page.screenshot(path=shots / "mlflow_model.png")

        page.goto(f"{url}/#/experiments/{experiment}{view}")
        page.get_by_text(run.info.run_name).first.wait_for()
        assert "/traces" not in page.url and "/overview" not in page.url, page.url
        page.screenshot(path=shots / "mlflow_experiment.png")

        page.goto(f"{url}/#/experiments/{experiment}/runs/{run.info.run_id}{view}")
        page.get_by_text("instruction_pairs.train").first.wait_for()
        page.get_by_role("link", name=settings.model_name).first.wait_for()
        page.screenshot(path=shots / "mlflow_run.png", full_page=True)

        page.goto(f"{url}/#/experiments/{experiment}/runs/{run.info.run_id}/artifacts/eval/comparison.csv{view}")
        page.get_by_role("cell", name="exact_match").first.wait_for()
        page.screenshot(path=shots / "mlflow_comparison_table.png")
        page.get_by_text("comparison.png", exact=True).first.click()  # in the artifact tree
        page.get_by_text("eval/comparison.png").first.wait_for()
        page.locator("img[src^='blob:']").first.wait_for()
        page.screenshot(path=shots / "mlflow_comparison_chart.png")
