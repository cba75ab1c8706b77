"""`make server`: the PostgreSQL-backed services of the server profile, each a process of its own.

With FT_PROFILE=server and FT_POSTGRES_URL (postgresql://user:password@host:port/database) set,
this starts, on FT_HOST (127.0.0.1 unless set):

- `mlflow`: the MLflow tracking server (`mlflow server`) on FT_MLFLOW_PORT (5000), its backend store
  the database FT_MLFLOW_DATABASE (`mlflow`, created if missing) on the same PostgreSQL server, its
  artifacts proxied to FT_MLFLOW_ARTIFACTS (a folder, or an object-store URL);
- `code-server`: the Dagster code server (`dagster code-server start`) holding
  `pipelines.definitions`, on FT_CODE_SERVER_PORT (4000);
- `webserver`: the Dagster UI (`dagster-webserver`) on FT_DAGSTER_PORT (3000), loading the code
  server over gRPC through `$FT_HOME/dagster/workspace.yaml`;
- `daemon`: `dagster-daemon run`: the run queue, sensors, schedules, automation, run monitoring.

Dagster keeps runs, event logs and schedules in FT_POSTGRES_URL's database (the instance's
dagster.yaml, written by `Settings.prepare`). Each service logs to `$FT_HOME/logs/<service>.log`.
Ctrl-C (or SIGTERM) stops them all; so does any one of them exiting. Passwords travel to the
services in their environment, never on a command line (which every user sees in `ps`), and are
never printed.

`services_down` is what `make run` asks before it starts in this profile: which of the services it
needs (PostgreSQL, the MLflow tracking server) do not answer, and what to start.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.settings import REPO_ROOT, ServerProfile, Settings
from resources.credentials import masked

# The code location's name: the same as `make dev` gives pipelines.definitions (workspace.yaml).
LOCATION_NAME = "pipelines.definitions"
WORKSPACE_YAML = """\
load_from:
  - grpc_server:
      host: {host}
      port: {port}
      location_name: {name}
"""
STOP_SECONDS = 20
# How long `services_down` waits for each service to answer: once, no retries.
ANSWER_SECONDS = 3
LOCATION_LOADED_QUERY = (
    '{"query": "{ workspaceOrError { ... on Workspace { locationEntries { name '
    'locationOrLoadError { __typename } } } } }"}'
)


class ServerError(RuntimeError):
    """A service could not be started; the message says which and why (credentials masked)."""


@dataclass(frozen=True)
class Service:
    """One process: its command line, the environment it adds, and how to tell it is ready."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, repr=False)
    ready: Callable[[], bool] | None = field(default=None, compare=False)
    """Polled until true once started; None: ready as soon as it runs."""


def venv_command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def http_ok(url: str, body: str | None = None, expect: str | None = None) -> Callable[[], bool]:
    """A readiness check: `url` answers 200 (to a JSON POST of `body`), with `expect` in the reply."""

    def check() -> bool:
        data = body.encode() if body is not None else None
        request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status == 200 and (expect is None or expect in response.read().decode())
        except OSError:
            return False

    return check


def port_open(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex((host, port)) == 0

    return check


def workspace_file(settings: Settings) -> Path:
    """The workspace the webserver and daemon load: the code server, over gRPC."""
    server = settings.server
    path = settings.dagster_home / "workspace.yaml"
    path.write_text(WORKSPACE_YAML.format(host=server.client_host, port=server.code_server_port, name=LOCATION_NAME))
    return path


def options(**values) -> tuple[str, ...]:
    """Command-line options from keywords: options(working_directory=".") -> ("--working-directory", ".")."""
    return tuple(item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", str(value)))


def services(settings: Settings, workspace: Path) -> list[Service]:
    """The four services of the server profile, in the order they start."""
    server: ServerProfile = settings.server
    host, client = server.host, server.client_host
    mlflow = options(
        host=host, port=server.mlflow_port, workers=server.mlflow_workers, artifacts_destination=server.mlflow_artifacts
    )
    code_server = options(
        module_name="pipelines.definitions", working_directory=REPO_ROOT, location_name=LOCATION_NAME,
        host=host, port=server.code_server_port,
    )  # fmt: skip
    return [
        Service(
            "mlflow",
            (venv_command("mlflow"), "server", *mlflow),
            env={"MLFLOW_BACKEND_STORE_URI": server.mlflow_backend_store_uri},
            ready=http_ok(f"http://{client}:{server.mlflow_port}/health"),
        ),
        Service(
            "code-server",
            (venv_command("dagster"), "code-server", "start", *code_server),
            ready=port_open(client, server.code_server_port),
        ),
        Service(
            "webserver",
            (venv_command("dagster-webserver"), "-w", str(workspace), "-h", host, "-p", str(server.dagster_port)),
            ready=http_ok(
                f"http://{client}:{server.dagster_port}/graphql", LOCATION_LOADED_QUERY, '"RepositoryLocation"'
            ),
        ),
        Service("daemon", (venv_command("dagster-daemon"), "run", "-w", str(workspace))),
    ]


def ensure_database(libpq_url: str, database: str) -> bool:
    """Create `database` on the PostgreSQL server of `libpq_url` when missing; True if created."""
    import psycopg2
    from psycopg2 import sql

    try:
        connection = psycopg2.connect(libpq_url, connect_timeout=10)
    except psycopg2.OperationalError as error:
        raise ServerError(
            f"PostgreSQL at {masked(libpq_url)} cannot be reached: {masked(str(error)).strip()}\n"
            "Check FT_POSTGRES_URL (postgresql://user:password@host:port/database) and that the server runs."
        ) from error
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone():
                return False
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            return True
    except psycopg2.Error as error:
        raise ServerError(
            f"Could not create the database {database!r} for MLflow: {masked(str(error)).strip()}\n"
            "Create it yourself (CREATE DATABASE, as a user allowed to) or set FT_MLFLOW_DATABASE to one that exists."
        ) from error
    finally:
        connection.close()


def mlflow_down(tracking_uri: str, timeout: float = ANSWER_SECONDS) -> str | None:
    """Why the MLflow tracking server at `tracking_uri` (http or https) does not answer one GET of
    /health within `timeout` seconds; None when it answers 200."""
    parts = urlsplit(tracking_uri)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    # Without the user and password a URI may carry: /health needs none, and urllib would take them for the host.
    url = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return None if response.status == 200 else f"it answers HTTP {response.status} on /health"
    except urllib.error.HTTPError as error:
        return f"it answers HTTP {error.code} on /health, not as an MLflow tracking server does"
    except OSError as error:
        reason = getattr(error, "reason", error)
        return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def postgres_down(libpq_url: str, timeout: int = ANSWER_SECONDS) -> str | None:
    """Why PostgreSQL at `libpq_url` does not take one connection within `timeout` seconds (its
    error's first line, password masked); None when it does."""
    import psycopg2

    try:
        psycopg2.connect(libpq_url, connect_timeout=timeout).close()
    except psycopg2.Error as error:
        return masked(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    return None


def services_down(settings: Settings) -> list[str]:
    """The services `make run` needs that do not answer, one line each: which, where, why, and what
    to start. Only the server profile has any; the local profile needs none ([])."""
    server = settings.server
    if server is None:
        return []
    down = []
    why = postgres_down(server.libpq_url)
    if why is not None:
        down.append(
            f"PostgreSQL at {masked(server.libpq_url)} (FT_POSTGRES_URL): {why}. Start that PostgreSQL server "
            "(`make server` needs it too, and does not start it), or set FT_POSTGRES_URL to one that runs."
        )
    tracking = settings.mlflow_tracking_uri
    why = mlflow_down(tracking) if urlsplit(tracking).scheme in ("http", "https") else None
    if why is not None:
        start = (
            "Start `make server` (FT_PROFILE=server, FT_POSTGRES_URL set as here) in another terminal."
            if tracking == server.tracking_uri
            else "Start the tracking server MLFLOW_TRACKING_URI names, or unset it to use `make server`'s."
        )
        down.append(f"MLflow tracking server at {masked(tracking)}: {why}. {start}")
    return down


class ServiceGroup:
    """Started services, each in a process group of its own (so its workers stop with it)."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None):
        self.log_dir = log_dir
        self.env = dict(os.environ if env is None else env)
        self.processes: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "ServiceGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, service: Service, timeout: float = 180) -> None:
        """Start `service` and wait until it is ready; ServerError with its log's tail if it is not."""
        with open(self.log(service.name), "ab") as log:
            self.processes[service.name] = subprocess.Popen(
                service.argv, env={**self.env, **service.env}, cwd=REPO_ROOT,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while service.ready is not None and not service.ready():
            if self.processes[service.name].poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"{service.name} did not start:\n{self.tail(service.name)}")
            time.sleep(0.5)

    def tail(self, name: str, lines: int = 30) -> str:
        text = self.log(name).read_text(errors="replace") if self.log(name).exists() else ""
        return masked("\n".join(text.splitlines()[-lines:]))

    def stop(self, name: str) -> None:
        """SIGTERM to the service's process group, SIGKILL if it is still there after STOP_SECONDS."""
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)

    def exited(self) -> str | None:
        """The name of a service whose process has ended, if any."""
        return next((name for name, p in self.processes.items() if p.poll() is not None), None)


def start_services(settings: Settings, group: ServiceGroup, say: Callable[[str], None] = print) -> None:
    """MLflow's database, then each service in order, each waited for until ready."""
    server = settings.server
    if ensure_database(server.libpq_url, server.mlflow_database):
        say(f"Created the database {server.mlflow_database!r} for MLflow.")
    for service in services(settings, workspace_file(settings)):
        say(f"Starting {service.name} (log: {group.log(service.name)})")
        group.start(service)


def server_environment(settings: Settings) -> dict[str, str]:
    """What every service sees: this environment, DAGSTER_HOME, and the venv's commands on PATH
    (mlflow server starts its workers by name)."""
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "DAGSTER_HOME": str(settings.dagster_home), "PATH": f"{venv_bin}:{os.environ['PATH']}"}


def interrupt(signum, frame):
    """SIGTERM stops the services the way Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> int:
    try:
        settings = Settings.from_env()
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if settings.server is None:
        print("make server runs the server profile: set FT_PROFILE=server and FT_POSTGRES_URL.", file=sys.stderr)
        return 2
    settings.prepare()
    server = settings.server
    signal.signal(signal.SIGTERM, interrupt)
    with ServiceGroup(settings.home / "logs", server_environment(settings)) as group:
        try:
            start_services(settings, group)
            print(
                f"\nServer profile up (PostgreSQL {masked(server.postgres_url)}):\n"
                f"  Dagster UI  http://{server.client_host}:{server.dagster_port}\n"
                f"  MLflow      {settings.mlflow_tracking_uri}\n"
                f"  logs        {group.log_dir}/\nCtrl-C stops them all."
            )
            while (ended := group.exited()) is None:
                time.sleep(1)
            print(f"{ended} exited; stopping the others.\n{group.tail(ended)}", file=sys.stderr)
            return 1
        except ServerError as error:
            print(error, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("Stopping the services.")
            return 0


if __name__ == "__main__":
    sys.exit(main())
