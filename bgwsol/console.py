"""The terminal of a command-line job: what a person reads while it runs.

Only entry points use this module (:func:`bgwsol.errors.run_entry_point` opens the console,
a flow names its log file once it knows its output folder); the library itself only logs.

* this package's log records at INFO and above reach the terminal as one short line each
  (a warning as ``warning: ...``); other libraries' records go to the log file, and an error
  among them reaches the terminal once, in one line, with a pointer to the log;
* :meth:`Console.use_log_file` sends the process's own stdout and stderr (file descriptors 1
  and 2: Ray's and its workers' output, Tune's tables, MLflow's messages, C++ logs, Python
  warnings) to the log file, unless ``verbose``, and shows the progress events training
  workers send (:mod:`bgwsol.progress`): one line per epoch and, on a terminal, one status
  line that updates in place.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from pathlib import Path

from bgwsol.progress import BOARD_NAME, ProgressBoard, epoch_line, step_line

_active: "Console | None" = None
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to(output_dir: str | Path, job: str, verbose: bool = False) -> Path | None:
    """Send the running entry point's log (and, unless ``verbose``, the libraries' output) to
    ``<output_dir>/logs/<job>-<YYYYmmdd-HHMMSS>.log``; returns its path (None without a console)."""
    return log_in(Path(output_dir) / "logs", job, verbose)


def log_in(folder: str | Path, job: str, verbose: bool = False) -> Path | None:
    """:func:`log_to` with the log's folder given: ``<folder>/<job>-<YYYYmmdd-HHMMSS>.log``."""
    if _active is None:
        return None
    return _active.use_log_file(Path(folder) / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}.log", verbose)


def emit(text: str) -> None:
    """Write a job's result (a table, where to look) on the terminal's standard output."""
    console = _active
    stream = console.out if console is not None else sys.stdout
    if console is not None:
        console.clear_status()
    print(text, file=stream, flush=True)


class _TerminalHandler(logging.Handler):
    """This package's records, one line each; other libraries' errors once, with a pointer to the log."""

    def __init__(self, console: "Console"):
        super().__init__(logging.INFO)
        self.console = console
        self.shown: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().strip()
            first = message.splitlines()[0] if message else ""
            ours = record.name == "bgwsol" or record.name.startswith("bgwsol.") or record.name == "__main__"
            if self.console.verbose and not ours:
                self.console.line(self.format(record))
                return
            if ours:
                prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
                more = "" if "\n" not in message and not record.exc_info else self.console.see_log()
                self.console.line(f"{time.strftime('%H:%M:%S')}  {prefix}{first}{more}")
            elif record.levelno >= logging.ERROR and first not in self.shown:
                self.shown.add(first)
                self.console.line(f"{time.strftime('%H:%M:%S')}  error ({record.name}): {first}{self.console.see_log()}")
        except Exception:  # a console must never take the job down
            self.handleError(record)


class Console:
    """The terminal (``out``: results, ``err``: progress and messages) of program ``prog``."""

    def __init__(self, prog: str):
        self.prog = prog
        self.out, self.err = sys.stdout, sys.stderr
        self.verbose = True  # until a log file takes the libraries' output
        self.log_path: Path | None = None
        self._handler = _TerminalHandler(self)
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._file_handler: logging.Handler | None = None
        self._saved_fds: tuple[int, int] | None = None
        self._status_shown = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._root_level = logging.getLogger().level

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> "Console":
        """Show this package's log lines on the terminal; until :meth:`use_log_file`, other
        libraries' records at WARNING and above are shown too."""
        global _active
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        root.addHandler(self._handler)
        logging.captureWarnings(True)
        _active = self
        return self

    def use_log_file(self, path: str | Path, verbose: bool = False, progress: bool = True) -> Path:
        """Log everything to ``path`` (appended); unless ``verbose``, also the process's stdout and
        stderr, so that the terminal shows only this package's lines. ``progress``: show the
        training workers' progress events once Ray is up. Prints the log's path first."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = path.resolve()
        self._file_handler = logging.FileHandler(path, encoding="utf-8")
        self._file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(self._file_handler)
        self.line(f"log: {self.log_path}" + ("" if verbose else " (Ray's, Tune's and MLflow's own output; "
                                                               "--verbose shows it here)"))
        if not verbose:
            self._redirect(path)
        self.verbose = verbose
        if progress:
            self._poller = threading.Thread(target=self._poll, name="bgwsol-console", daemon=True)
            self._poller.start()
        return self.log_path

    def _redirect(self, path: Path) -> None:
        """Point file descriptors 1 and 2 at the log; ``out``/``err`` keep the terminal."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = (os.dup(1), os.dup(2))
        self.out = io.TextIOWrapper(os.fdopen(saved[0], "wb", buffering=0), encoding="utf-8",
                                    errors="replace", line_buffering=True)
        self.err = io.TextIOWrapper(os.fdopen(saved[1], "wb", buffering=0), encoding="utf-8",
                                    errors="replace", line_buffering=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self._saved_fds = (os.dup(saved[0]), os.dup(saved[1]))

    def stop_progress(self) -> None:
        """Stop showing progress (before Ray shuts down)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None
        self.clear_status()

    def close(self) -> None:
        """Give the terminal back: file descriptors, handlers and warnings as they were."""
        global _active
        self.stop_progress()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if self._saved_fds is not None:
            os.dup2(self._saved_fds[0], 1)
            os.dup2(self._saved_fds[1], 2)
            for fd in self._saved_fds:
                os.close(fd)
            self._saved_fds = None
            for stream in (self.out, self.err):
                stream.close()
            self.out, self.err = sys.stdout, sys.stderr
        root = logging.getLogger()
        for handler in (self._handler, self._file_handler):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(self._root_level)
        logging.captureWarnings(False)
        if _active is self:
            _active = None

    # ------------------------------------------------------------------ writing

    def see_log(self) -> str:
        return f" (details: {self.log_path})" if self.log_path else ""

    def line(self, text: str) -> None:
        """One line on the terminal (after clearing the status line)."""
        with self._lock:
            self._clear_status_locked()
            print(text, file=self.err, flush=True)

    def status(self, text: str) -> None:
        """An updating status line, on a terminal only (a pipe or file gets the epoch lines only)."""
        if not self._isatty():
            return
        width = 200
        try:
            width = os.get_terminal_size(self.err.fileno()).columns - 1
        except (OSError, ValueError):
            pass
        with self._lock:
            self.err.write("\r\033[K" + text[:width])
            self.err.flush()
            self._status_shown = True

    def clear_status(self) -> None:
        with self._lock:
            self._clear_status_locked()

    def _clear_status_locked(self) -> None:
        if self._status_shown:
            self.err.write("\r\033[K")
            self.err.flush()
            self._status_shown = False

    def _isatty(self) -> bool:
        try:
            return self.err.isatty()
        except (ValueError, OSError):
            return False

    def error(self, text: str) -> None:
        """``<prog>: <text>`` on the terminal (also in the log)."""
        if self._file_handler is not None:
            self._file_handler.handle(logging.makeLogRecord({"name": self.prog, "levelno": logging.ERROR,
                                                             "levelname": "ERROR", "msg": text}))
        self.line(f"{self.prog}: {text}")

    def bug(self, exc: BaseException) -> bool:
        """A bug's traceback goes to the log and one line to the terminal; returns False when
        there is no log file (the caller lets the traceback reach the terminal as usual)."""
        if self._file_handler is None or self.verbose:
            return False
        record = logging.makeLogRecord({"name": self.prog, "levelno": logging.ERROR, "levelname": "ERROR",
                                        "msg": "the job failed with an unexpected error",
                                        "exc_info": (type(exc), exc, exc.__traceback__)})
        self._file_handler.handle(record)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.line(f"{self.prog}: error: {type(exc).__name__}: {first} (traceback: {self.log_path})")
        return True

    # ------------------------------------------------------------------ progress

    def _poll(self) -> None:
        """Create the progress board once Ray is up, then show what the workers send."""
        board = None
        while not self._stop.wait(0.5):
            ray = sys.modules.get("ray")
            try:
                if ray is None or not ray.is_initialized():
                    continue
                if board is None:
                    board = ray.remote(ProgressBoard).options(name=BOARD_NAME, num_cpus=0,
                                                              get_if_exists=True).remote()
                events = ray.get(board.drain.remote(), timeout=10)
            except Exception as exc:  # Ray going down, or a slow cluster: try again later
                logging.getLogger(__name__).debug("progress: %s", exc)
                continue
            for event in events:
                if event.get("kind") == "epoch":
                    self.line(f"{time.strftime('%H:%M:%S')}  {epoch_line(event)}")
                elif event.get("kind") == "step":
                    self.status(f"{time.strftime('%H:%M:%S')}  {step_line(event)}")
