"""Progress of long work, as events and log lines a console can show.

* :func:`stage` logs one line when a stage of a job starts and one when it ends, with its
  duration (through this package's logger: the caller's logging setup decides where it goes);
* :class:`ProgressSender` is what rank 0 of a training run uses to send step and epoch
  events to the driver's :class:`ProgressBoard`, a named Ray actor that exists only while a
  console shows them (:mod:`bgwsol.console`); without one, sending is a no-op;
* :func:`epoch_line` and :func:`step_line` are how those events read on a console.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Iterator

log = logging.getLogger(__name__)

BOARD_NAME = "bgwsol-progress"
# what an epoch line shows after the loss: metric key in the epoch record -> label
EPOCH_METRICS = {"val_maxboxacc_v2": "MaxBoxAccV2", "val_top1_loc": "Top-1 Loc", "val_top1_cls": "cls"}


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@contextlib.contextmanager
def stage(name: str, logger: logging.Logger | None = None) -> Iterator[None]:
    """Log ``<name> ...`` now and ``<name>: done in <duration>`` (or ``<name>: stopped after ...``
    when the block raises) at the end."""
    logger = logger or log
    logger.info("%s ...", name)
    t0 = time.monotonic()
    try:
        yield
    except BaseException:
        logger.info("%s: stopped after %s", name, duration(time.monotonic() - t0))
        raise
    logger.info("%s: done in %s", name, duration(time.monotonic() - t0))


def epoch_line(event: dict) -> str:
    """One epoch of one run, e.g. ``cam-ilsvrc-3f2a  epoch 2/5  loss 1.234  412 img/s  val
    MaxBoxAccV2 63.2, Top-1 Loc 40.0 (best Top-1 Loc 40.0)  ETA 1 min 20 s``."""
    parts = [f"{event['run']}  epoch {event['epoch'] + 1}/{event['epochs']}"]
    if "train_loss" in event:
        parts.append(f"loss {event['train_loss']:.3f}")
    if event.get("images_per_s"):
        parts.append(f"{event['images_per_s']:.0f} img/s")
    shown = [f"{label} {event[key]:.1f}" for key, label in EPOCH_METRICS.items() if key in event]
    if shown:
        select = event.get("select", "")
        named = EPOCH_METRICS.get(f"val_{select}", select)
        best = f" (best {named} {event['best_score']:.1f})" if event.get("best_score", -1) >= 0 else ""
        parts.append("val " + ", ".join(shown) + best)
    left = event["epochs"] - event["epoch"] - 1
    if left > 0 and event.get("epoch_s"):
        parts.append(f"ETA {duration(left * event['epoch_s'])}")
    return "  ".join(parts)


def step_line(event: dict) -> str:
    """Where a run is inside an epoch, e.g. ``cam-ilsvrc-3f2a  epoch 2/5  step 12/40  412 img/s  ETA 45 s``."""
    line = (f"{event['run']}  epoch {event['epoch'] + 1}/{event['epochs']}  step {event['step']}/{event['steps']}"
            f"  {event['images_per_s']:.0f} img/s")
    if event["step"] and event["steps"]:
        per_step = event["elapsed_s"] / event["step"]
        line += f"  epoch ETA {duration((event['steps'] - event['step']) * per_step)}"
    return line


class ProgressBoard:
    """The driver's mailbox of progress events (a Ray actor named :data:`BOARD_NAME`, created by
    the console): workers push, the console drains. Holds at most ``limit`` events (the oldest
    step events go first)."""

    def __init__(self, limit: int = 1000):
        self.events: list[dict] = []
        self.limit = limit

    def push(self, event: dict) -> None:
        self.events.append(event)
        if len(self.events) > self.limit:
            steps = [i for i, e in enumerate(self.events) if e["kind"] == "step"]
            del self.events[steps[0] if steps else 0]

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


class ProgressSender:
    """Rank 0's side of a run's progress: :meth:`step` (at most every ``every_s`` seconds) and
    :meth:`epoch` events for ``run`` (``select``: the validation metric that picks its
    checkpoint, e.g. ``top1_loc``), sent without waiting to the :class:`ProgressBoard` if a
    console created one; a no-op otherwise (looked up again at most every 30 s)."""

    def __init__(self, run: str, epochs: int, select: str = "", every_s: float = 2.0):
        self.run, self.epochs, self.select, self.every_s = run, epochs, select, every_s
        self._board = None
        self._looked_up = -math.inf
        self._last_step = -math.inf
        self._epoch_started = time.monotonic()

    def _send(self, event: dict) -> None:
        now = time.monotonic()
        if self._board is None and now - self._looked_up > 30:
            self._looked_up = now
            try:
                import ray

                self._board = ray.get_actor(BOARD_NAME)
            except Exception:  # no console: nobody to tell
                self._board = None
        if self._board is not None:
            try:
                self._board.push.remote({"run": self.run, "epochs": self.epochs, "select": self.select, **event})
            except Exception as exc:  # the console went away: training goes on without it
                log.debug("progress board gone: %s", exc)
                self._board = None

    def step(self, epoch: int, step: int, steps: int, images: int, elapsed_s: float) -> None:
        """``step`` of ``steps`` done in ``epoch`` (0-based), ``images`` seen by this rank in ``elapsed_s``."""
        now = time.monotonic()
        if step == 1:
            self._epoch_started = now - elapsed_s
        if now - self._last_step < self.every_s:
            return
        self._last_step = now
        self._send({"kind": "step", "epoch": epoch, "step": step, "steps": steps, "elapsed_s": elapsed_s,
                    "images_per_s": images / elapsed_s if elapsed_s > 0 else 0.0})

    def epoch(self, record: dict) -> None:
        """An epoch's record (:func:`bgwsol.training.engine.train_one_epoch` plus validation)."""
        now = time.monotonic()
        shown = {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}
        self._send({"kind": "epoch", **shown, "epoch": int(record["epoch"]), "epoch_s": now - self._epoch_started})
        self._epoch_started = now
