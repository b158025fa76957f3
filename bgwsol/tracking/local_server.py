"""Start and stop a local MLflow tracking server (sqlite store + proxied local artifact store).

Small-machine settings: one uvicorn worker and no job runner. The server runs in its own
process group, so stopping it stops everything it started.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bgwsol.service_start import START_ATTEMPTS, start_with_retries

log = logging.getLogger(__name__)


def machine_busy() -> bool:
    """True when the 1-minute load average is at or above the CPU count (always False where the
    system has no load average)."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return False


# Ports for servers started here come from 20000-32767: below Linux's ephemeral range (32768-60999,
# where bind(0) and every outgoing connection take theirs) and above Ray's worker ports
# (10002-19999). A port found free in the ephemeral range can be taken by some connection before
# the server binds it (seen in CI: a Ray node's metrics exporter, "Address already in use").
LISTEN_PORTS = range(20000, 32768)


def free_port() -> int:
    """A port in :data:`LISTEN_PORTS` on 127.0.0.1 that nothing listens on now."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1}")


class ServerNotAnswering(TimeoutError, RuntimeError):
    """The server's ``/health`` did not answer within the time allowed."""


@dataclass
class LocalMlflowServer:
    """A running ``mlflow server``; ``url`` is its tracking URI. Use as a context manager or call :meth:`stop`."""

    root: Path
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def ui_command(self) -> str:
        """The command that serves the same store in a browser after this server is gone."""
        return (f"{Path(sys.executable).parent / 'mlflow'} server --host 127.0.0.1 --port 5000 --workers 1 "
                f"--backend-store-uri {self.backend_uri} --artifacts-destination {self.artifacts}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def wait_ready(self, timeout_s: float = 120.0, busy_timeout_s: float = 600.0) -> "LocalMlflowServer":
        """Block until ``/health`` answers; stops the server and raises (naming ``server.log``) if it
        exits, or if it has not answered after ``timeout_s``, or after ``busy_timeout_s`` while the
        machine is busy (1-minute load average at or above its CPU count: a server starved of CPU
        imports slowly but is not hung; one warning line says the wait was extended)."""
        import requests

        start = time.monotonic()
        extended = False
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}; "
                                   f"see {self.root / 'server.log'}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            waited = time.monotonic() - start
            if waited >= timeout_s:
                if waited >= busy_timeout_s or not machine_busy():
                    break
                if not extended:
                    extended = True
                    log.warning("MLflow server on %s not answering after %.0f s on a busy machine (load %.1f on %d "
                                "CPUs): waiting up to %.0f s", self.url, waited, os.getloadavg()[0],
                                os.cpu_count() or 1, busy_timeout_s)
            time.sleep(0.2)
        self.stop()
        raise ServerNotAnswering(f"mlflow server did not answer on {self.url} within {waited:.0f} s; "
                                 f"see {self.root / 'server.log'}")

    def ready(self, timeout_s: float = 120.0, busy_timeout_s: float = 600.0,
              attempts: int = START_ATTEMPTS) -> "LocalMlflowServer":
        """:meth:`wait_ready`, and a server that did not answer in time (or exited because its port
        was taken meanwhile) is stopped and launched again on another port, up to ``attempts``
        times in all, one console line per retry; the last failure is a one-line
        :class:`~bgwsol.errors.UserError` naming ``server.log``."""
        tries = iter(range(attempts))

        def start() -> "LocalMlflowServer":
            if next(tries):  # every try after the first launches a new server
                fresh = launch(self.root)
                self.port, self.process = fresh.port, fresh.process
            return self.wait_ready(timeout_s, busy_timeout_s)

        return start_with_retries("The MLflow server", start, self.stop, attempts=attempts,
                                  retryable=self._may_answer_if_started_again)

    def _may_answer_if_started_again(self, exc: BaseException) -> bool:
        """A server too slow to answer, or one that lost its port to another process."""
        if isinstance(exc, ServerNotAnswering):
            return True
        try:
            tail = (self.root / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return False
        return "address already in use" in tail.lower()

    def __enter__(self) -> "LocalMlflowServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(root: str | Path, port: int = 0) -> LocalMlflowServer:
    """Start ``mlflow server`` on 127.0.0.1 with its store under ``root`` and return at once.

    The server takes seconds to import and migrate its database: do other work, then call
    :meth:`LocalMlflowServer.wait_ready`.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(root / "server.log", "ab") as log_file:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    return LocalMlflowServer(root, port, proc)


def start(root: str | Path, port: int = 0, timeout_s: float = 120.0) -> LocalMlflowServer:
    """Start ``mlflow server`` on 127.0.0.1 with its store under ``root``; waits until ``/health``
    answers, starting it again (on another port) when it does not (:meth:`LocalMlflowServer.ready`)."""
    return launch(root, port).ready(timeout_s)
