"""Child processes for the interrupt tests, started as from a terminal."""

from __future__ import annotations

import signal
import subprocess


def as_from_a_terminal() -> None:
    """In the child before ``exec``: SIGINT back to its default disposition, as in a command started from a
    terminal. A background job of a non-interactive shell (``bash -c "pytest ... &"``, ``nohup``) inherits SIGINT
    *ignored*, and Python then installs no ``KeyboardInterrupt`` handler, so the signal these tests send would
    be dropped and the command would finish (exit 0): a failure of how the tests were started, not of the code."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd: list[str], *, new_session: bool = False) -> subprocess.Popen:
    """``cmd`` with piped text output, SIGINT as from a terminal; ``new_session``: in a process group of its own
    (so that ``os.killpg`` reaches it and its pool workers, as Ctrl-C does)."""
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
        preexec_fn=as_from_a_terminal,
    )
