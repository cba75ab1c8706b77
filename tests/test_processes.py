"""One liveness check for every watcher: a live process is alive, an exited one is not, and a zombie
(exited, not yet reaped, still holding its pid) counts as gone, with /proc and without it."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resources.processes import alive, signal_reaches

HAS_PROC = Path("/proc/self/stat").exists()


def reaped_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def zombie():
    """A forked child that has exited and that nobody reaps until the test ends."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        if HAS_PROC:  # wait until the kernel shows it exited (it is a zombie until waited for)
            deadline = time.monotonic() + 10
            stat = Path(f"/proc/{pid}/stat")
            while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
                time.sleep(0.01)
        yield pid
    finally:
        with contextlib.suppress(ChildProcessError):  # the test reaped it
            os.waitpid(pid, 0)


def test_this_process_and_a_running_child_are_alive():
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid), "killed and reaped"


def test_an_exited_and_reaped_process_is_gone():
    assert not alive(reaped_pid())


@pytest.mark.skipif(not HAS_PROC, reason="a zombie is told apart through /proc only")
def test_a_zombie_counts_as_gone(zombie):
    assert signal_reaches(zombie), "the zombie still holds its pid: signal 0 alone would call it alive"
    assert not alive(zombie)
    assert os.waitpid(zombie, os.WNOHANG)[0] == zombie, "it was a real, unreaped child"


def test_without_proc_signal_zero_answers(tmp_path):
    assert alive(os.getpid(), proc=tmp_path)
    assert not alive(reaped_pid(), proc=tmp_path)


def test_no_process_group_is_taken_for_a_process():
    assert not alive(0) and not alive(-os.getpgid(0))
