"""Errors a user can cause and fix, and how every entry point reports them and stops.

A :class:`UserError` (a missing file, a store or tracking server that cannot be reached, a
refused credential, a busy shard prefix, a run name holding another training) carries its
whole story in its message: entry points print it as one ``error: ...`` line and exit 1. A
traceback is kept for what is not a :class:`UserError`: a bug.

:func:`run_entry_point` is what each flow's and command's ``__main__`` calls. It makes
SIGTERM behave like Ctrl-C (a ``KeyboardInterrupt`` raised in the main thread), so every
``finally`` of the job runs: the MLflow server it started is stopped and the local Ray it
started is shut down with all its worker processes, whichever way the job is stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


class UserError(Exception):
    """A failure with a cause outside the code; its message names the file, URL or setting."""


# errors of the operating system a user causes: reported in one line, like a UserError
USER_OS_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, (UserError, *USER_OS_ERRORS))


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def path_problem(flag: str, path: str) -> str | None:
    """``"<flag> '<path>': not found"`` for a local path that does not exist (URLs are not checked here)."""
    if path and "://" not in path and not Path(path).exists():
        return f"{flag} {path!r}: not found"
    return None


def report_problems(problems: list[str], stream=None) -> int:
    """Print each problem found before any work as ``error: ...`` on ``stream`` (stderr); returns
    the exit status: 2 (a usage error, like argparse's) when there are any, else 0."""
    stream = stream or sys.stderr
    for problem in problems:
        print(f"error: {problem}", file=stream)
    return 2 if problems else 0


def _interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


_entry_points_running = 0  # run_entry_point calls in progress in this process
_stop_reason: BaseException | None = None  # why stop_job stopped the job, for run_entry_point's one line


def stop_job(reason: BaseException) -> None:
    """Stop the job from another thread (a watchdog), the way Ctrl-C does: every ``finally`` runs
    and a rerun continues. Under :func:`run_entry_point` the job then ends with ``reason`` as its
    one error line (status 1); a library caller gets a ``KeyboardInterrupt`` in its main thread."""
    import _thread
    import signal

    global _stop_reason
    _stop_reason = reason
    # SIGTERM is Ctrl-C under an entry point (see _stop_on_sigterm); elsewhere SIGINT's default is
    _thread.interrupt_main(signal.SIGTERM if _entry_points_running else signal.SIGINT)


def _stop_on_sigterm():
    """Make SIGTERM raise KeyboardInterrupt in the main thread; returns the handler it replaced
    (None off the main thread, where signals cannot be handled)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def reassert_sigterm() -> None:
    """Called right after ``ray.init``, which installs its own SIGTERM handlers (the driver's
    ``sys.exit`` and the core worker's crash handler, which aborts the process and skips every
    cleanup): under :func:`run_entry_point` SIGTERM is Ctrl-C again. A no-op otherwise, so a
    program that uses bgwsol as a library keeps whatever handlers it set."""
    if _entry_points_running:
        _stop_on_sigterm()


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def run_entry_point(main: Callable[[], int], prog: str) -> int:
    """Run ``main`` as a program's body, with a :class:`bgwsol.console.Console` open; returns the
    exit status.

    * a :class:`UserError` (or a missing file, a refused permission): ``<prog>: error: <one line>``, status 1;
    * Ctrl-C or SIGTERM: ``<prog>: stopped``, status 130, after every ``finally`` of the job ran;
    * anything else (a bug): its traceback goes to the job's log file and one line to the
      terminal, status 1; without a log file the exception propagates with its traceback.

    Either way, a Ray connection ``main`` opened is shut down (a local Ray it started goes with
    all its worker processes); one that was open before is left alone.
    """
    import signal

    from bgwsol.console import Console

    global _entry_points_running, _stop_reason
    ray_before = _ray_connected()
    previous = _stop_on_sigterm()
    _entry_points_running += 1
    console = Console(prog).open()
    try:
        return main()
    except KeyboardInterrupt:
        if _stop_reason is not None:  # a watchdog stopped the job (stop_job): its reason is the one line
            console.error(f"error: {one_line(_stop_reason)}; what finished is kept (rerun the same command "
                          f"to continue)")
            _stop_reason = None
            return 1
        console.error("stopped; what finished is kept (rerun the same command to continue)")
        return 130
    except Exception as exc:
        if is_user_error(exc):
            console.error(f"error: {one_line(exc)}")
            return 1
        if console.bug(exc):
            return 1
        raise
    finally:
        _entry_points_running -= 1
        console.stop_progress()
        try:
            if not ray_before and _ray_connected():
                sys.modules["ray"].shutdown()
        finally:
            console.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
