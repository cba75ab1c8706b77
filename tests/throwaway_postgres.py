"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl in a temporary folder, on a free
loopback port, password authentication, deleted afterwards.

Needs PostgreSQL's server binaries (Debian: `apt-get install -y postgresql`; `.ci/run` installs them).
initdb refuses to run as root, so as root the cluster runs as the `postgres` user (runuser).
"""

import glob
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


def server_binaries() -> Path:
    """The folder holding initdb and pg_ctl; a clear failure when PostgreSQL is not installed."""
    found = shutil.which("initdb") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; the server-profile tests "
            "start a throwaway cluster with them. Install them: `apt-get install -y postgresql` (.ci/run does)."
        )
    return Path(found).parent


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
