"""Whether a process still runs: the one answer for every watcher of another process.

A process that has exited but whose parent has not yet reaped it (a zombie) still has its pid, so
`os.kill(pid, 0)` succeeds on it; yet it will never do anything again. Every caller here asks "is it
still working?" (`make run`'s stale runs, a training job's parent, the Data Docs server's parent),
so a zombie counts as gone:

    if not alive(int(run.tags["ft/pid"])):
        ...  # the process that started this run is gone

Linux answers from `/proc/<pid>/stat` (its state letter); where there is no `/proc` (macOS) or it is
hidden, `os.kill(pid, 0)` answers, which cannot tell a zombie from a live process.
"""

import os
from pathlib import Path

# States of /proc/<pid>/stat that mean the process has exited: zombie, dead.
GONE_STATES = frozenset("ZX")


def alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether process `pid` exists and is not a zombie (exited, not yet reaped)."""
    if pid <= 0:  # 0 and negative pids name process groups to os.kill, not a process
        return False
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:  # no /proc here, or it hides other users' processes
        return signal_reaches(pid)
    # The command name, in parentheses, may hold spaces and parentheses: the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0] not in GONE_STATES


def signal_reaches(pid: int) -> bool:
    """Whether `pid` exists, zombie or not, by sending it no signal (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True
