"""The operator's view in a real browser: `make dev` (Dagster) and `make mlflow-ui` (MLflow) over the
state of one pipeline run on the tiny model, driven by Playwright through Debian's chromium. The UIs
run on other ports than the ones the run was configured with (FT_DAGSTER_UI_URL, FT_MLFLOW_UI_URL,
where nothing answers), as the README suggests for a busy port: the links between them must still
work. Screenshots go to a temporary folder (printed); the three the README shows are written to
tests/screenshots/.

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
from contextlib import ExitStack, contextmanager
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
# A check's status in the list of an asset's checks, and in its overview's latest execution.
CHECK_STATUS = r"\b(Succeeded|Failed|Not evaluated|Skipped|In progress)\b"
LISTED_STATUS = """([name, status]) => {
  let row = document.querySelector(`[title="${name}"]`);
  while (row && !new RegExp(status).test(row.innerText)) row = row.parentElement;
  return row ? row.innerText.match(new RegExp(status))[1] : null;
}"""
SAME_VERDICT = {"Succeeded": "Passed", "Failed": "Failed"}


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
def served(targets: list[tuple[str, int, str]], env: dict, logs: Path):
    """`make <target> PORT=port` for each (target, port, probe), all started at once (the venv taken as
    built), until the block ends; each one's whole process group is stopped then. Yields their URLs."""
    with ExitStack() as stack:
        started = []
        for target, port, probe in targets:
            log = logs / f"{target}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    ["make", "-o", ".venv/.installed", target, f"PORT={port}"],
                    cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            stack.callback(stop_group, process)
            started.append((target, port, probe, process, log))
        deadline = time.time() + SERVER_START
        for target, port, probe, process, log in started:
            while not answers(f"http://127.0.0.1:{port}{probe}"):
                if process.poll() is not None or time.time() > deadline:
                    pytest.fail(f"make {target} did not come up on port {port}:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield {target: f"http://127.0.0.1:{port}" for target, port, _ in targets}


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
    persistent Dagster instance under a temp FT_HOME, and the environment the UIs run with. The run
    knows the UIs at `dagster` and `mlflow`, where nothing will answer; they start on `dagster_ui`
    and `mlflow_ui`. The Data Docs and the links server are at `docs` (FT_DOCS_URL)."""
    home = tmp_path_factory.mktemp("ui_home")
    ports = {name: free_port() for name in ("dagster", "mlflow", "docs", "dagster_ui", "mlflow_ui")}
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
def uis(ui_state, shots):
    """`make dev` and `make mlflow-ui`, each on a port of its own that the run never heard of."""
    ports = ui_state["ports"]
    targets = [("dev", ports["dagster_ui"], "/server_info"), ("mlflow-ui", ports["mlflow_ui"], "/health")]
    with served(targets, ui_state["env"], shots) as urls:
        yield {"dagster": urls["dev"], "mlflow": urls["mlflow-ui"]}


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


def metadata_row(page, key: str):
    """The row of the metadata table showing `key`."""
    row = page.locator("tr", has=page.get_by_text(key, exact=True)).first
    row.scroll_into_view_if_needed()
    return row


def check_statuses(page, url: str, asset: str, name: str) -> tuple[str, str]:
    """A check's status as the list of the asset's checks says it, and as its latest execution does."""
    page.goto(f"{url}/assets/{asset}?view=checks&checkDetail={name}")
    page.get_by_text("Evaluation result").first.wait_for()
    latest = re.search(r"Evaluation result\s+(\w+)", page.locator("body").inner_text()).group(1)
    # The list renders on its own: wait until it shows the check with a status (read once, it may not yet).
    listed = page.wait_for_function(LISTED_STATUS, arg=[name, CHECK_STATUS])
    return listed.json_value(), latest


def test_dagster_ui_shows_the_graph_metadata_quality_and_launches_a_run(ui_state, uis, browser, shots):
    instance, defs, ports = ui_state["instance"], ui_state["defs"], ui_state["ports"]
    assets = sorted(k.path[-1] for k in defs.resolve_asset_graph().get_all_asset_keys())
    url = uis["dagster"]
    page = new_page(browser)
    page.goto(f"{url}/asset-groups?expanded={EXPANDED_GROUPS}")
    page.get_by_text("champion_model", exact=True).first.wait_for()
    page.wait_for_timeout(1000)  # the graph's layout settles
    shown = page.locator("[class*='AssetNode_assetName']").all_inner_texts()
    assert sorted(full_name(label, assets) for label in shown) == assets, shown
    page.screenshot(path=shots / "asset_graph.png")
    page.screenshot(path=README_SCREENSHOTS / "asset_graph.png")

    # The link to MLflow names the links server, which finds MLflow on the port it runs on now.
    page.goto(f"{url}/assets/registered_model")
    page.get_by_text("mlflow_model_version", exact=True).first.wait_for()
    link = page.locator("a[href*='/go/mlflow/models/test-model/versions/']").first
    assert link.get_attribute("href").startswith(f"http://127.0.0.1:{ports['docs']}/go/mlflow/")
    page.screenshot(path=shots / "registered_model.png", full_page=True)
    with page.context.expect_page() as opened:
        link.click()
    mlflow = opened.value
    mlflow.set_default_timeout(UI_WAIT_MS)
    mlflow.get_by_text("@ champion").first.wait_for()
    assert mlflow.url.startswith(f"{uis['mlflow']}/#/models/test-model/versions/"), mlflow.url
    mlflow.close()

    page.goto(f"{url}/assets/model_evaluation")
    page.get_by_text("exact_match (primary)").first.scroll_into_view_if_needed()
    page.screenshot(path=shots / "model_evaluation.png")
    page.screenshot(path=README_SCREENSHOTS / "model_evaluation.png")
    assert metadata_row(page, "generations_cut").locator("table").count() == 1, "a table, not JSON"
    assert "champion" in metadata_row(page, "champion").inner_text()

    # Each drop's quality: the partitions of validated_records, one drop's figures beside the list.
    page.goto(f"{url}/assets/validated_records?view=partitions&partition=2026-01-12")
    for drop in ("2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"):
        page.get_by_text(drop).first.wait_for()
    page.get_by_text("drop_status", exact=True).first.wait_for()
    page.get_by_text("passed: in training").first.wait_for()
    for key, cell in (("top_reasons", "required field missing or blank"), ("pii_counts", "email")):
        assert metadata_row(page, key).locator("table").get_by_text(cell).count() == 1, f"{key}: a small table"
    assert metadata_row(page, "rejected_share").inner_text().split()[-1] == "0.0077", "rounded to 4 decimals"
    page.screenshot(path=shots / "validated_records_partitions.png", full_page=True)

    # The check list and each check's latest execution say the same.
    checks = {"instruction_pairs": ("personal_data_scan", "train_eval_disjoint"),
              "validated_records": ("rows_pass_record_suite", "rejected_share_within_limit")}  # fmt: skip
    for asset, names in checks.items():
        for name in names:
            listed, latest = check_statuses(page, url, asset, name)
            assert SAME_VERDICT.get(listed) == latest, f"{asset} {name}: {listed} in the list, {latest} latest"
    assert check_statuses(page, url, "instruction_pairs", "personal_data_scan") == ("Failed", "Failed")
    page.get_by_text("2026-01-12: 2 rows, email 1, phone 1").first.wait_for()
    page.screenshot(path=shots / "personal_data_scan.png")

    before = {r.run_id for r in instance.get_runs()}
    page.goto(f"{url}/assets/instruction_pairs")
    page.get_by_text("Latest materialization").first.wait_for()
    page.locator("button:has-text('Materialize')").first.click()
    run = wait_for_run(instance, "instruction_pairs", before)
    assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id} from the UI: {run.status}"
    page.goto(f"{url}/runs/{run.run_id}")
    page.get_by_text("Success").first.wait_for()
    page.screenshot(path=shots / "launched_run.png")


def test_mlflow_ui_opens_on_the_training_view_with_the_gate_and_links_back(ui_state, uis, browser, shots):
    from mlflow import MlflowClient

    from resources.mlflow_registry import logged

    settings = ui_state["settings"]
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(settings.model_name, "champion")
    run = client.get_run(version.run_id)
    experiment = run.info.experiment_id
    view = "?workflowType=machine_learning"
    url = uis["mlflow"]
    assert all(logged(v) == v for v in run.data.metrics.values()), "metrics logged as the UIs show figures"

    # The address alone, in a browser that never chose a view: the runs list, as model training, with
    # the gate's verdict, differences and intervals as columns; no Assistant opening by itself.
    page = new_page(browser)
    page.goto(f"{url}/")
    page.get_by_text(run.info.run_name).first.wait_for()
    assert f"#/experiments/{experiment}/runs?workflowType=machine_learning" in page.url, page.url
    assert "viewStateShareKey=promotion-gate" in page.url, "the saved view with the gate's columns"
    # (columns out of sight are not drawn: the verdict's reason, rightmost, is left out here)
    for column in ("metrics.`gate.vs_base.difference`", "metrics.`gate.vs_base.low`", "metrics.`gate.vs_base.high`",
                   "metrics.`gate.passed`", "tags.`gate.passed`"):  # fmt: skip
        page.locator(f'[col-id="{column}"]').first.wait_for(state="attached")
    assert page.evaluate("localStorage.getItem('mlflow.workflowType_v1')") == '"machine_learning"'
    page.wait_for_timeout(1000)  # what opens by itself has opened
    assert not page.get_by_text("Ask questions about your experiments").first.is_visible(), "the Assistant stays shut"
    page.screenshot(path=shots / "mlflow_runs.png")
    page.screenshot(path=README_SCREENSHOTS / "mlflow_runs.png")

    page.goto(f"{url}/#/models/{settings.model_name}{view}")
    page.get_by_text("@ champion").first.wait_for()
    page.screenshot(path=shots / "mlflow_model.png")

    # The run's link back to its Dagster run, through the links server to Dagster's port of now.
    page.goto(f"{url}/#/experiments/{experiment}/runs/{run.info.run_id}{view}")
    page.get_by_text("instruction_pairs.train").first.wait_for()
    page.get_by_role("link", name=settings.model_name).first.wait_for()
    page.screenshot(path=shots / "mlflow_run.png", full_page=True)
    with page.context.expect_page() as opened:
        page.locator("a[href*='/go/dagster/runs/']").first.click()
    dagster = opened.value
    dagster.set_default_timeout(UI_WAIT_MS)
    dagster.get_by_text("Success").first.wait_for()
    assert dagster.url == f"{uis['dagster']}/runs/{run.data.tags['dagster.run_id']}", dagster.url
    dagster.close()

    page.goto(f"{url}/#/experiments/{experiment}/runs/{run.info.run_id}/artifacts/eval/comparison.csv{view}")
    page.get_by_role("cell", name="exact_match").first.wait_for()
    page.screenshot(path=shots / "mlflow_comparison_table.png")
    page.get_by_text("comparison.png", exact=True).first.click()  # in the artifact tree
    page.get_by_text("eval/comparison.png").first.wait_for()
    page.locator("img[src^='blob:']").first.wait_for()
    page.screenshot(path=shots / "mlflow_comparison_chart.png")
