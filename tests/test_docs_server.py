"""The Data Docs server `make dev` starts beside Dagster serves the docs folder and stops once the
process that started it is gone, even while that process lingers as an unreaped zombie."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from resources.processes import alive, signal_reaches

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_docs_server_stops_when_its_starter_dies_unreaped(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "FT_HOME": str(tmp_path), "FT_DOCS_URL": url}
    # A shell stands in for make dev: it starts the server, says its pid, and waits.
    starter = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -m pipelines.docs_server & echo $!; exec sleep 120"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = int(starter.stdout.readline())
    try:
        assert wait_until(lambda: _answers(url), 30), "the server answers"
        os.kill(starter.pid, signal.SIGKILL)  # not reaped: a zombie until starter.wait()
        assert wait_until(lambda: not alive(starter.pid), 5) and signal_reaches(starter.pid), "starter is a zombie"
        assert wait_until(lambda: not alive(server), 15), "the server stopped with its starter"
        assert not _answers(url)
    finally:
        if alive(server):
            os.kill(server, signal.SIGKILL)
        starter.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/index.html", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False
