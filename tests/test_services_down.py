"""`make run` in the server profile without `make server`: the services it needs are asked once, with
a short timeout, before any run, and the ones that do not answer are named with their address and
what to start. Real sockets on loopback: a closed port, a server that answers, one that never does."""

import http.server
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from pipelines import run
from pipelines.server import mlflow_down, services_down
from pipelines.settings import Settings

SECRET = "s3cret-Pa55"


def closed_port() -> int:
    """A loopback port nothing listens on (bound once by the system, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_settings(tmp_path, postgres_port: int, mlflow_port: int, **extra) -> Settings:
    return Settings.from_env(
        {
            "FT_HOME": str(tmp_path / "home"),
            "FT_PROFILE": "server",
            "FT_POSTGRES_URL": f"postgresql://ft:{SECRET}@127.0.0.1:{postgres_port}/dagster",
            "FT_MLFLOW_PORT": str(mlflow_port),
            **extra,
        }
    )


class Health(http.server.BaseHTTPRequestHandler):
    """GET /health: 200, as the MLflow tracking server answers; anything else: 404."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@contextmanager
def answering(handler=Health):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_local_profile_needs_no_service(tmp_path):
    assert services_down(Settings.from_env({"FT_HOME": str(tmp_path)})) == []


def test_services_that_do_not_answer_are_named_with_their_address_and_what_to_start(tmp_path):
    postgres_port, mlflow_port = closed_port(), closed_port()
    settings = server_settings(tmp_path, postgres_port, mlflow_port)
    started = time.monotonic()
    postgres, mlflow = services_down(settings)
    assert time.monotonic() - started < 5, "asked once each, no retries"
    assert postgres.startswith(
        f"PostgreSQL at postgresql://ft:***@127.0.0.1:{postgres_port}/dagster (FT_POSTGRES_URL): "
    )
    assert "Connection refused" in postgres and "set FT_POSTGRES_URL to one that runs" in postgres
    assert mlflow.startswith(f"MLflow tracking server at http://127.0.0.1:{mlflow_port}: Connection refused.")
    assert "`make server` (FT_PROFILE=server, FT_POSTGRES_URL set as here)" in mlflow
    assert SECRET not in postgres + mlflow


def test_an_unreachable_postgresql_host_is_given_up_on_after_the_timeout(tmp_path):
    # 192.0.2.1 is reserved for documentation (TEST-NET-1): nothing there answers
    settings = server_settings(tmp_path, 5432, closed_port(), FT_POSTGRES_URL="postgresql://ft@192.0.2.1:5432/dagster")
    started = time.monotonic()
    down = services_down(settings)
    assert time.monotonic() - started < 10, "connect_timeout bounds the wait"
    assert down[0].startswith("PostgreSQL at postgresql://ft@192.0.2.1:5432/dagster (FT_POSTGRES_URL): ")


def test_a_tracking_server_that_answers_is_not_listed_and_one_that_answers_wrongly_is(tmp_path):
    with answering() as port:
        settings = server_settings(tmp_path, closed_port(), port)
        (postgres,) = services_down(settings)
        assert postgres.startswith("PostgreSQL at ")
        assert mlflow_down(f"http://127.0.0.1:{port}") is None
        assert mlflow_down(f"http://ft:{SECRET}@127.0.0.1:{port}/") is None, "a URI's password is not a host"
        assert mlflow_down(f"http://127.0.0.1:{port}/elsewhere") == (
            "it answers HTTP 404 on /health, not as an MLflow tracking server does"
        )


def test_a_tracking_server_that_never_answers_is_given_up_on_after_the_timeout():
    with socket.socket() as listening:  # accepts connections (the backlog), never replies
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        started = time.monotonic()
        assert mlflow_down(f"http://127.0.0.1:{listening.getsockname()[1]}", timeout=0.5) == "timed out"
        assert time.monotonic() - started < 3


def test_another_tracking_server_is_named_by_its_variable(tmp_path):
    elsewhere = f"http://127.0.0.1:{closed_port()}"
    settings = server_settings(tmp_path, closed_port(), closed_port(), MLFLOW_TRACKING_URI=elsewhere)
    mlflow = services_down(settings)[1]
    assert mlflow.startswith(f"MLflow tracking server at {elsewhere}: ") and "MLFLOW_TRACKING_URI" in mlflow


def test_make_run_stops_before_any_run_saying_what_to_start(tmp_path, monkeypatch, capsys):
    settings = server_settings(tmp_path, closed_port(), closed_port())
    monkeypatch.setenv("FT_HOME", str(settings.home))
    monkeypatch.setenv("FT_PROFILE", "server")
    monkeypatch.setenv("FT_POSTGRES_URL", settings.server.postgres_url)
    monkeypatch.setenv("FT_MLFLOW_PORT", str(settings.server.mlflow_port))
    for variable in ("MLFLOW_TRACKING_URI", "DAGSTER_HOME"):
        monkeypatch.delenv(variable, raising=False)
    assert run.main() == 1
    err = capsys.readouterr().err
    assert err.startswith("make run (FT_PROFILE=server) needs these services, which do not answer:\n- PostgreSQL at ")
    assert f"\n- MLflow tracking server at {settings.mlflow_tracking_uri}: Connection refused." in err
    assert "make server" in err and SECRET not in err
    assert not settings.home.exists(), "nothing prepared, no run started"


@pytest.mark.parametrize("scheme", ["sqlite:///tmp/mlflow.db", "file:///tmp/mlruns"])
def test_a_tracking_uri_that_is_not_a_server_is_not_asked(tmp_path, scheme):
    settings = server_settings(tmp_path, closed_port(), closed_port(), MLFLOW_TRACKING_URI=scheme)
    assert [line.split(" at ")[0] for line in services_down(settings)] == ["PostgreSQL"]
