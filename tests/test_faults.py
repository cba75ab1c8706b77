"""Faults and safe defaults, as unit tests: credentials masked everywhere they could show, the server
profile's settings and service commands (loopback, no password on a command line), registration
that fails clearly and leaves no half-registered version, safetensors-only loading without remote
code, and the served model's request caps (HTTP 400 from MLflow's scoring server)."""

import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
import yaml
from mlflow.exceptions import MlflowException

from pipelines import server
from pipelines.definitions import build_resources
from pipelines.settings import DAGSTER_INSTANCE_YAML, DAGSTER_POSTGRES_URL_ENV, REPO_ROOT, Settings
from resources.credentials import has_password, masked
from resources.mlflow_registry import SERVED_MODEL_CODE, MlflowRegistry, chat_signature
from resources.models import ModelLoader

SECRET = "s3cret-Pa55"
URL = f"postgresql://ft:{SECRET}@db.internal:5432/dagster?sslmode=require"


def server_env(tmp_path, **extra) -> dict[str, str]:
    return {"FT_HOME": str(tmp_path / "home"), "FT_PROFILE": "server", "FT_POSTGRES_URL": URL, **extra}


@pytest.mark.parametrize(
    "text, shown",
    [
        (URL, "postgresql://ft:***@db.internal:5432/dagster?sslmode=require"),
        ("postgresql://ft:p@ss@db/x", "postgresql://ft:***@db/x"),
        (
            "postgresql://db/x?user=ft&password=pw&sslmode=require",
            "postgresql://db/x?user=ft&password=***&sslmode=require",
        ),
        ("see http://u:p@h:1/a and https://h:5000/b", "see http://u:***@h:1/a and https://h:5000/b"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql://ft@db/x", "postgresql://ft@db/x"),
    ],
)
def test_passwords_in_urls_are_masked(text, shown):
    assert masked(text) == shown
    assert has_password(text) == (text != shown)


def test_server_profile_settings_come_from_the_environment(tmp_path):
    s = Settings.from_env(server_env(tmp_path, FT_MLFLOW_PORT="5050"))
    assert s.profile == "server" and s.server.host == "127.0.0.1"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5050"
    assert (
        s.server.mlflow_backend_store_uri
        == f"postgresql+psycopg2://ft:{SECRET}@db.internal:5432/mlflow?sslmode=require"
    )
    assert s.server.dagster_storage_url.startswith("postgresql+psycopg2://") and s.server.libpq_url == URL
    assert s.mlflow_client_artifact_root == "", "the tracking server keeps the artifacts"
    assert s.server.mlflow_artifacts == str(tmp_path / "home" / "mlflow" / "artifacts")
    assert Settings.from_env({"FT_HOME": str(tmp_path)}).profile == "local"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"FT_PROFILE": "server"}, "FT_PROFILE=server needs FT_POSTGRES_URL=postgresql://"),
        ({"FT_PROFILE": "server", "FT_POSTGRES_URL": f"mysql://ft:{SECRET}@h/x"}, "must start with postgresql://"),
        ({"FT_PROFILE": "cluster"}, "Available: local, server"),
        ({"FT_PROFILE": "server", "FT_POSTGRES_URL": URL, "FT_MLFLOW_PORT": "http"}, "FT_MLFLOW_PORT='http'"),
    ],
)
def test_a_wrong_server_setting_is_refused_by_name_without_its_password(tmp_path, env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
        Settings.from_env({"FT_HOME": str(tmp_path), **env})
    assert SECRET not in str(error.value)


def test_settings_never_show_the_password(tmp_path):
    s = Settings.from_env(server_env(tmp_path, MLFLOW_TRACKING_URI=f"http://user:{SECRET}@mlflow:5000"))
    assert SECRET not in repr(s) and SECRET not in str(s) and SECRET not in repr(s.server)
    assert "postgresql://ft:***@db.internal" in repr(s)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **server_env(tmp_path)}
    for args in ([], ["server"], ["mlflow_tracking_uri"]):
        shown = subprocess.run(
            [sys.executable, "-m", "pipelines.settings", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert SECRET not in shown.stdout + shown.stderr


def test_the_dagster_instance_of_the_server_profile_reads_postgresql_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", "")
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_ENV, "")
    s = Settings.from_env(server_env(tmp_path)).prepare()
    text = (s.dagster_home / "dagster.yaml").read_text()
    instance = yaml.safe_load(text)
    assert SECRET not in text
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": DAGSTER_POSTGRES_URL_ENV}
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert instance["concurrency"]["pools"]["default_limit"] == 1
    assert os.environ[DAGSTER_POSTGRES_URL_ENV] == s.server.dagster_storage_url
    # Switching back to the embedded profile rewrites the generated file; an edited one is kept.
    Settings.from_env({"FT_HOME": str(tmp_path / "home")}).prepare()
    assert (s.dagster_home / "dagster.yaml").read_text() == DAGSTER_INSTANCE_YAML
    (s.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    Settings.from_env(server_env(tmp_path)).prepare()
    assert (s.dagster_home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_services_bind_loopback_and_keep_passwords_off_command_lines(tmp_path):
    s = Settings.from_env(server_env(tmp_path))
    commands = {svc.name: svc for svc in server.services(s, tmp_path / "workspace.yaml")}
    assert list(commands) == ["mlflow", "code-server", "webserver", "daemon"]
    for name in ("mlflow", "code-server", "webserver"):
        argv = commands[name].argv
        flag = "-h" if name == "webserver" else "--host"
        assert argv[argv.index(flag) + 1] == "127.0.0.1", name
    assert all(SECRET not in " ".join(svc.argv) for svc in commands.values())
    assert commands["mlflow"].env == {"MLFLOW_BACKEND_STORE_URI": s.server.mlflow_backend_store_uri}
    elsewhere = Settings.from_env(server_env(tmp_path, FT_HOST="0.0.0.0"))
    (mlflow, *_) = server.services(elsewhere, tmp_path / "workspace.yaml")
    assert mlflow.argv[mlflow.argv.index("--host") + 1] == "0.0.0.0"
    assert elsewhere.mlflow_tracking_uri == "http://127.0.0.1:5000", "clients on this machine use loopback"


def test_make_server_without_the_server_profile_says_what_to_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FT_HOME", str(tmp_path))
    monkeypatch.delenv("FT_PROFILE", raising=False)
    assert server.main() == 2
    assert "FT_PROFILE=server and FT_POSTGRES_URL" in capsys.readouterr().err


def test_a_tracking_uri_with_a_password_reaches_dagster_as_an_environment_variable(tmp_path):
    s = Settings.from_env(server_env(tmp_path, MLFLOW_TRACKING_URI=f"https://ft:{SECRET}@mlflow.example.com"))
    registry = build_resources(s)["mlflow_registry"]
    assert isinstance(registry.tracking_uri, dg.EnvVar) and registry.tracking_uri == "MLFLOW_TRACKING_URI"
    assert build_resources(Settings.from_env({"FT_HOME": str(tmp_path)}))["mlflow_registry"].tracking_uri.startswith(
        "sqlite:///"
    )


def test_an_unreachable_tracking_server_is_reported_with_what_to_do_and_no_password(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    registry = MlflowRegistry(tracking_uri=f"http://ft:{SECRET}@127.0.0.1:9", artifact_root="", model_name="m")
    error = MlflowException(f"API request to http://ft:{SECRET}@127.0.0.1:9/api failed: Max retries exceeded")
    message = registry.unreachable_message(error)
    assert SECRET not in message and "http://ft:***@127.0.0.1:9" in message
    assert "retried each request 3 times" in message and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in message
    assert "Nothing was registered and no alias moved" in message and "make server" in message


@pytest.fixture
def sqlite_registry(tmp_path):
    return MlflowRegistry(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "artifacts"), model_name="m"
    )


def logged_model_uri(registry: MlflowRegistry) -> str:
    mlflow = registry._connect()
    return f"models:/{mlflow.initialize_logged_model(name='model').model_id}"


def test_a_version_whose_alias_cannot_be_set_is_deleted_again(sqlite_registry, monkeypatch):
    from mlflow import MlflowClient

    uri = logged_model_uri(sqlite_registry)
    assert sqlite_registry.register_version(uri, {"k": "v"}, "card", alias="challenger") == "1"

    def unreachable(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", unreachable)
    with pytest.raises(ConnectionError):
        sqlite_registry.register_version(uri, {"k": "v"}, "card", alias="challenger")
    monkeypatch.undo()
    client = sqlite_registry.client()
    assert [str(v.version) for v in client.search_model_versions("name = 'm'")] == ["1"]
    assert str(client.get_model_version_by_alias("m", "challenger").version) == "1"


def test_models_load_from_safetensors_only(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, pickled / name)
    torch.save(load_file(tiny_model_dir / "model.safetensors"), pickled / "pytorch_model.bin")
    loader = ModelLoader(base_model=str(pickled))
    assert loader.load_args() == {"use_safetensors": True, "trust_remote_code": False}
    with pytest.raises(ValueError, match="Only safetensors"):
        loader.materialize_base(tmp_path / "out")
    with pytest.raises(OSError):
        loader.load_model(str(pickled))
    assert loader.load_model(str(tiny_model_dir)) is not None
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        loader.with_adapter(None, str(tmp_path))


def test_a_models_own_code_never_runs_unless_trusted(tiny_model_dir, tmp_path):
    """A folder whose config points at its own modeling code (auto_map): refused, the code not run."""
    custom = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, custom)
    marker = tmp_path / "code-ran"
    (custom / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="custom-llm", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError):
        ModelLoader(base_model=str(custom)).load_model(str(custom))
    assert not marker.exists()
    assert ModelLoader(trust_remote_code=True).load_args()["trust_remote_code"] is True


@pytest.fixture(scope="module")
def scoring_app(tiny_model_dir, tmp_path_factory):
    """The served model (resources/served_model.py) on the tiny model, behind MLflow's scoring server
    app, the one `mlflow models serve` (make serve) runs."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    from assets.domain import tool_calls

    path = tmp_path_factory.mktemp("served") / "model"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(SERVED_MODEL_CODE),
        artifacts={"model": str(tiny_model_dir)},
        code_paths=[tool_calls.__file__],
        model_config={"default_max_new_tokens": 4},
        signature=chat_signature(4),
    )
    return TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(path))))


def invoke(app, rows: list[dict], **params):
    body = {"dataframe_records": rows, **({"params": params} if params else {})}
    return app.post("/invocations", content=json.dumps(body), headers={"Content-Type": "application/json"})


CHAT = [{"role": "user", "content": "Triage: the app crashes."}]


def test_a_request_within_the_caps_is_answered(scoring_app):
    response = invoke(scoring_app, [{"messages": CHAT}], max_new_tokens=3)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["role"] == "assistant"


@pytest.mark.parametrize(
    "rows, params, reason",
    [
        ([{"messages": CHAT}], {"max_new_tokens": 100_000}, "max_new_tokens=100000 is outside 1..1024"),
        ([{"messages": CHAT}] * 17, {}, "17 rows in one request; this model takes at most 16"),
        ([{"messages": [{"role": "user", "content": "x" * 40_000}]}], {}, "characters of messages and tools"),
    ],
)
def test_a_request_over_a_cap_gets_a_400_naming_the_cap(scoring_app, rows, params, reason):
    response = invoke(scoring_app, rows, **params)
    assert response.status_code == 400
    assert reason in response.json()["message"]


def test_without_postgresql_binaries_the_server_tests_fail_saying_how_to_install(monkeypatch):
    from tests import throwaway_postgres

    monkeypatch.setattr(throwaway_postgres, "wheel_initdb", lambda: None)
    monkeypatch.setattr(throwaway_postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(throwaway_postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(RuntimeError, match="apt-get install -y postgresql"):
        throwaway_postgres.server_binaries()
