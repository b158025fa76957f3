"""Starting a service the job runs itself (its local Ray node, the MLflow server, a Serve
application) on a machine that may be busy: a start that times out is cleaned up and tried
again, a bounded number of times, with one console line per retry saying why.

A cold or loaded laptop is slow, not broken: Ray gives its raylet a fixed 30 s to register with
the GCS (``ray._private.node``, not configurable), and on 2 cores beside other work that is
sometimes not enough. What cannot succeed (a bad argument, a missing file) is not retried: only
the failures :func:`is_start_timeout` recognises are.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable, TypeVar

from bgwsol.errors import UserError, one_line

log = logging.getLogger(__name__)

T = TypeVar("T")

START_ATTEMPTS = 3

# what a start that was too slow says (Ray's node and Serve's controller; our own waits raise TimeoutError)
_TIMEOUT_WORDS = ("timed out", "timeout", "did not answer", "did not start", "overloaded")


def is_start_timeout(exc: BaseException) -> bool:
    """True for a failure that a slow machine explains (a wait that ran out), which a fresh start
    may get past; False for anything else (a wrong argument or path fails the same way again)."""
    if isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, (UserError, ValueError, TypeError, FileNotFoundError, PermissionError)):
        return False
    text = str(exc).lower()
    return any(word in text for word in _TIMEOUT_WORDS)


def machine_load() -> str:
    """``"load 6.1 on 2 cores"`` (the 1-minute load average), or ``"2 cores"`` where there is none."""
    cores = os.cpu_count() or 1
    try:
        return f"load {os.getloadavg()[0]:.1f} on {cores} cores"
    except (AttributeError, OSError):
        return f"{cores} cores"


def did_not_start(exc: BaseException) -> str:
    """``"did not start: <the failure's first line>"``, the default words of a retry line."""
    return f"did not start: {one_line(exc)}"


def start_with_retries(what: str, start: Callable[[], T], cleanup: Callable[[], None], *,
                       attempts: int = START_ATTEMPTS, advice: str = "",
                       retryable: Callable[[BaseException], bool] = is_start_timeout,
                       explain: Callable[[BaseException], str] | None = None) -> T:
    """``start()`` up to ``attempts`` times; returns what the first start that succeeds returns.

    After a failed start, ``cleanup()`` removes whatever it left (half-started processes) before
    the next try. A failure ``retryable`` rejects is cleaned up and raised at once. After the last
    try a :class:`UserError` says in one line what did not start, why, on how busy a machine, and
    ``advice`` (what to do). ``explain`` turns a failure into the words of those lines.
    """
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as exc:
            cleanup()
            if not retryable(exc):
                raise
            why = explain(exc) if explain else did_not_start(exc)
            if attempt == attempts:
                raise UserError(f"{what} {why} in any of {attempts} tries ({machine_load()})"
                                + (f"; {advice}" if advice else "")) from exc
            log.warning("%s %s (%s); starting it again (%d of %d)", what, why, machine_load(), attempt + 1, attempts)
    raise AssertionError("unreachable")


def _psutil():
    """psutil as Ray ships it (``ray/thirdparty_files``, on ``sys.path`` once ray is imported)."""
    import ray  # noqa: F401 - deferred: ray is heavy, and this module sits under every --help

    import psutil

    return psutil


def child_pids() -> set[int]:
    """The pids of every process this one started, children of children included."""
    psutil = _psutil()

    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def kill_processes(pids: set[int], grace_s: float = 5.0) -> None:
    """SIGTERM each of ``pids`` that still runs, then SIGKILL what is left after ``grace_s``."""
    psutil = _psutil()

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)
            procs.append(proc)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


class NewChildren:
    """Remembers this process's children now; :meth:`kill` stops every child started since (a
    half-started Ray node's GCS, raylet, dashboard and their helpers)."""

    def __init__(self) -> None:
        self.before = child_pids()

    def kill(self) -> None:
        kill_processes(child_pids() - self.before)
