"""What a job's Ray Train runs hold on the cluster, what they wait for, and letting go of it.

A Ray Train V2 run is a controller actor (0 CPU, on the node of the process that called
``fit``) and a worker group inside one placement group (one bundle per worker). Ray Train
removes both when the run ends; this module makes sure of it and makes waiting visible:

* :class:`RunLedger`, a named actor per job (:data:`LEDGER_NAME`), learns what each run holds:
  its placement group from rank 0 once the worker group is up (:func:`note_placement_group`),
  and its controller from :class:`ControllerNote`, a Ray Train ``UserCallback`` that runs in the
  controller at the run's first report;
* :func:`release_run`, called by the driver when a run or Tune trial has ended however it
  ended, gives Ray Train a moment to clean up, then kills the controller and removes the
  placement groups that are still there, and returns one line saying so;
* :class:`ResourceWatch`, a driver thread, says in one line what the job has waited for
  since when and who holds the cluster's CPUs and GPUs, at most every few minutes, and stops
  the job after a bound (:func:`bgwsol.errors.stop_job`).

Everything here uses Ray's public state API (``ray.util.state``) on the connected cluster's
GCS address (several local Rays on one machine make the default lookup ambiguous).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from bgwsol.errors import UserError

log = logging.getLogger(__name__)

LEDGER_NAME = "bgwsol-runs"
RESOURCES = ("CPU", "GPU")
STATE_TIMEOUT_S = 10  # one state-API call; a busy dashboard is asked again at the next look


class RunLedger:
    """Run name -> what it holds: ``placement_groups`` (hex ids), ``controller`` (its actor id
    and handle, or None before the first report and once the run ended), ``started`` and
    ``ended`` (``time.time()``; ``ended`` None while it runs); and ``notices``, lines for the
    console (what :func:`release_run` had to release, from whichever process ran it)."""

    def __init__(self) -> None:
        self.runs: dict[str, dict] = {}
        self.notices: list[str] = []

    def _run(self, run: str) -> dict:
        return self.runs.setdefault(run, {"placement_groups": [], "controller": None, "started": time.time(),
                                          "ended": None})

    def started(self, run: str) -> None:
        entry = self._run(run)
        entry["started"], entry["ended"] = time.time(), None

    def placement_group(self, run: str, pg_id: str) -> None:
        groups = self._run(run)["placement_groups"]
        if pg_id and pg_id not in groups:
            groups.append(pg_id)

    def controller(self, run: str, actor_id: str, handles: list) -> None:
        # the handle comes in a list: Ray would pass a top-level handle argument as is
        self._run(run)["controller"] = (actor_id, handles[0])

    def ended(self, run: str) -> dict:
        """Mark ``run`` ended; returns what it held, ``{"placement_groups", "controller": [(id,
        handle) or None]}``, and forgets the controller's handle (a handle kept here would keep a
        finished controller alive)."""
        entry = self._run(run)
        entry["ended"] = entry["ended"] or time.time()
        held = {"placement_groups": list(entry["placement_groups"]), "controller": [entry["controller"]]}
        entry["controller"] = None
        return held

    def overview(self) -> dict[str, dict]:
        """Every run without its controller handle: ``{"placement_groups", "started", "ended"}``."""
        return {run: {k: v for k, v in entry.items() if k != "controller"} for run, entry in self.runs.items()}

    def notice(self, line: str) -> None:
        self.notices.append(line)

    def drain_notices(self) -> list[str]:
        lines, self.notices = self.notices, []
        return lines


def open_ledger():
    """Create this job's :class:`RunLedger` (or return the one that exists)."""
    import ray

    return ray.remote(num_cpus=0)(RunLedger).options(name=LEDGER_NAME, get_if_exists=True).remote()


def _ledger():
    """The job's ledger, or None when no watch is open (bgwsol used as a library)."""
    import ray

    try:
        return ray.get_actor(LEDGER_NAME)
    except ValueError:
        return None


def note_run_started(run: str) -> None:
    """Tell the ledger (if any) that ``run`` starts: from here on it may wait for resources."""
    ledger = _ledger()
    if ledger is not None:
        ledger.started.remote(run)


def note_placement_group(run: str) -> None:
    """Called on a Ray Train worker: tell the ledger (if any) which placement group ``run`` holds."""
    import ray

    pg_id = ray.get_runtime_context().get_placement_group_id()
    ledger = _ledger()
    if ledger is not None and pg_id:
        ledger.placement_group.remote(run, pg_id)


def controller_note():
    """A Ray Train ``UserCallback`` that tells the ledger, from inside the controller, which
    controller runs the run (at the first report; a no-op without a ledger)."""
    import ray.train

    class ControllerNote(ray.train.UserCallback):
        def __init__(self) -> None:
            self.told = False

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if self.told:
                return
            self.told = True
            ledger = _ledger()
            if ledger is not None:
                import ray

                context = ray.get_runtime_context()
                ledger.controller.remote(run_context.run_config.name, context.get_actor_id(), [context.current_actor])

    return ControllerNote()


# ---------------------------------------------------------------------------- the state API


def _address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def live_placement_groups(job_id: str | None = None) -> list:
    """Placement groups not yet removed (``ray.util.state`` records with bundles), optionally of one job."""
    from ray.util.state import list_placement_groups

    filters = [("state", "!=", "REMOVED")] + ([("creator_job_id", "=", job_id)] if job_id else [])
    return list(list_placement_groups(address=_address(), filters=filters, detail=True, raise_on_missing_output=False,
                                      timeout=STATE_TIMEOUT_S))


def live_train_actors() -> list:
    """Alive Ray Train controllers and workers (``ray.util.state`` actor records)."""
    from ray.util.state import list_actors

    found = []
    for cls in ("TrainController", "RayTrainWorker"):
        found += list_actors(address=_address(), filters=[("state", "=", "ALIVE"), ("class_name", "=", cls)],
                             detail=True, raise_on_missing_output=False, timeout=STATE_TIMEOUT_S)
    return found


def bundle_total(pg, resource: str = "CPU") -> float:
    """What a placement group reserves of ``resource``, over its bundles."""
    return float(sum(b.get("unit_resources", {}).get(resource, 0.0) for b in (pg.bundles or [])))


def describe_bundles(pg) -> str:
    """``2 × {CPU: 1}``: a placement group's bundles as a person reads them."""
    shapes = [", ".join(f"{k}: {v:g}" for k, v in sorted(b.get("unit_resources", {}).items())
                        if k in RESOURCES or k == "memory")
              for b in (pg.bundles or [])]
    if shapes and all(s == shapes[0] for s in shapes):
        return f"{len(shapes)} × {{{shapes[0]}}}"
    return " + ".join(f"{{{s}}}" for s in shapes) or "no bundles"


def remove_placement_group(pg_id: str) -> None:
    import ray
    from ray.util import remove_placement_group as remove
    from ray.util.placement_group import PlacementGroup

    remove(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


def release_run(run: str, grace_s: float = 30.0, controller_finished: bool = False, poll_s: float = 1.0) -> str | None:
    """Make sure the ended ``run`` holds nothing on the cluster; returns one line when something
    had to be released (also sent to the job's console through the ledger), else None.

    Waits up to ``grace_s`` for Ray Train's own cleanup (its placement groups removed, its
    controller gone), then kills the controller and removes the placement groups still there.
    ``controller_finished``: called by ``fit`` after the controller returned its result: the
    controller has nothing left to do and is ended at once, never waited for (a handle that
    passed through the ledger can keep an idle controller alive). Without a
    ledger (no :class:`ResourceWatch` open in the job) this is a no-op.
    """
    import ray

    ledger = _ledger()
    if ledger is None:
        return None
    held = ray.get(ledger.ended.remote(run))
    controller = held["controller"][0]  # (actor id, handle) or None
    del held["controller"]
    if controller_finished:
        if controller is not None:
            ray.kill(controller[1])
        controller = None
    groups = set(held["placement_groups"])
    deadline = time.monotonic() + grace_s
    while True:
        left_groups = {pg.placement_group_id: pg for pg in live_placement_groups() if pg.placement_group_id in groups}
        alive = controller is not None and actor_alive(controller[0])
        if not left_groups and not alive:
            return None
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    removed = []
    if alive:
        ray.kill(controller[1])
        removed.append("its Ray Train controller")
    for pg_id, pg in left_groups.items():
        remove_placement_group(pg_id)
        removed.append(f"its placement group {pg_id[:8]} ({describe_bundles(pg)}, {pg.state})")
    line = f"run {run} ended but still held {' and '.join(removed)} after {grace_s:.0f} s: released"
    ledger.notice.remote(line)
    return line


def actor_alive(actor_id: str) -> bool:
    from ray.util.state import get_actor

    state = get_actor(actor_id, address=_address(), timeout=STATE_TIMEOUT_S)
    return state is not None and state.state == "ALIVE"


# ---------------------------------------------------------------------------- waiting


class ResourceWaitTimeout(UserError, RuntimeError):
    """The job waited longer than its bound (``--cluster.resource_wait_s``) for resources."""


@dataclass
class Waiting:
    """What a job waits for at one look: ``demands`` (one phrase each, e.g. ``run X: 2 × {CPU: 1}``)
    and who holds the cluster: ``holders`` (phrases), ``used`` and ``total`` per resource."""

    demands: list[str] = field(default_factory=list)
    holders: list[str] = field(default_factory=list)
    used: dict[str, float] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)

    def line(self, waited_s: float) -> str:
        from bgwsol.progress import duration

        held = "; ".join(f"{self.used.get(r, 0.0):g} of {self.total[r]:g} {r}s in use" for r in RESOURCES
                         if self.total.get(r))
        by = (" by " + ", ".join(self.holders)) if self.holders else " (the cluster is too small for it)"
        return f"waiting {duration(waited_s)} for {'; '.join(self.demands)}: {held}{by}"


def _age(seconds_ago: float) -> str:
    from bgwsol.progress import duration

    return f"{duration(seconds_ago)} ago"


def look(job_id: str, ledger_runs: dict[str, dict]) -> Waiting:
    """What job ``job_id`` waits for now (its pending placement groups, tasks and actors) and who
    holds the cluster's CPUs and GPUs (placement groups, named by run where the ledger knows them,
    and work outside placement groups)."""
    import ray
    from ray.util.state import list_actors, list_tasks

    now = time.time()
    groups = live_placement_groups()
    run_of = {pg: run for run, entry in ledger_runs.items() for pg in entry["placement_groups"]}
    # a run that started, holds no placement group yet and has not ended is the one waiting for one
    unplaced = [run for run, entry in ledger_runs.items() if entry["ended"] is None and not any(
        pg in {g.placement_group_id for g in groups} for pg in entry["placement_groups"])]
    waiting = Waiting()
    for pg in groups:
        if pg.creator_job_id != job_id or pg.state not in ("PENDING", "RESCHEDULING"):
            continue
        who = run_of.get(pg.placement_group_id) or (" or ".join(f"run {r}" for r in unplaced) if unplaced else
                                                    f"placement group {pg.placement_group_id[:8]}")
        waiting.demands.append(f"{who}: {describe_bundles(pg)}")
    pending_tasks = [("job_id", "=", job_id), ("state", "=", "PENDING_NODE_ASSIGNMENT")]
    for task in list_tasks(address=_address(), filters=pending_tasks, detail=True, raise_on_missing_output=False,
                           limit=100, timeout=STATE_TIMEOUT_S):
        need = ", ".join(f"{k}: {v:g}" for k, v in sorted((task.required_resources or {}).items())
                         if k in RESOURCES and v)
        if need:  # a task that needs no CPU or GPU waits for a worker process to start, not for the cluster
            waiting.demands.append(f"task {task.func_or_class_name} {{{need}}}")
    pending_actors = [("job_id", "=", job_id), ("state", "=", "PENDING_CREATION")]
    for actor in list_actors(address=_address(), filters=pending_actors, detail=True, raise_on_missing_output=False,
                             limit=100, timeout=STATE_TIMEOUT_S):
        need = ", ".join(f"{k}: {v:g}" for k, v in sorted((actor.required_resources or {}).items())
                         if k in RESOURCES and v)
        if need:
            waiting.demands.append(f"actor {actor.class_name} {{{need}}}")
    total, free = ray.cluster_resources(), ray.available_resources()
    waiting.total = {r: float(total.get(r, 0.0)) for r in RESOURCES}
    waiting.used = {r: waiting.total[r] - float(free.get(r, 0.0)) for r in RESOURCES}
    in_groups = {r: 0.0 for r in RESOURCES}
    for pg in groups:
        if pg.state != "CREATED":
            continue
        held = {r: bundle_total(pg, r) for r in RESOURCES}
        if not any(held.values()):
            continue
        for r in RESOURCES:
            in_groups[r] += held[r]
        amount = ", ".join(f"{v:g} {r}" for r, v in held.items() if v)
        run = run_of.get(pg.placement_group_id)
        if run is not None:
            ended = ledger_runs[run]["ended"]
            status = f"ended {_age(now - ended)}" if ended else "running"
            waiting.holders.append(f"{amount}: the placement group of run {run} ({status})")
        elif pg.creator_job_id == job_id:
            waiting.holders.append(f"{amount}: placement group {pg.placement_group_id[:8]} of this job")
        else:
            waiting.holders.append(f"{amount}: placement group {pg.placement_group_id[:8]} of another job "
                                   f"({pg.creator_job_id})")
    outside = {r: waiting.used[r] - in_groups[r] for r in RESOURCES}
    if any(v > 1e-6 for v in outside.values()):
        waiting.holders.append(", ".join(f"{v:g} {r}" for r, v in outside.items() if v > 1e-6)
                               + ": tasks and actors outside placement groups (Ray Data, evaluation, other jobs)")
    return waiting


_watching = threading.local()


class ResourceWatch:
    """A driver thread that watches what the job waits for (use as a context manager, after
    ``ray.init``; a nested one in the same thread is a no-op).

    Every ``poll_s`` it looks (:func:`look`). Once the job has waited ``notice_s`` (default 60 s,
    or half the bound if that is shorter) without a break, one warning line says for what and
    who holds the cluster; it repeats at most every ``repeat_s``. After ``limit_s`` (0: wait
    forever, for clusters that scale up) it calls
    ``on_limit`` with a :class:`ResourceWaitTimeout` (by default :func:`bgwsol.errors.stop_job`,
    which stops the job as Ctrl-C would, with that error as its one line) and stops watching.
    It also opens the job's :class:`RunLedger`.
    """

    def __init__(self, limit_s: float, notice_s: float | None = None, repeat_s: float = 180.0, poll_s: float = 5.0,
                 on_limit=None):
        if notice_s is None:
            notice_s = min(60.0, limit_s / 2) if limit_s > 0 else 60.0
        self.limit_s, self.notice_s, self.repeat_s, self.poll_s = limit_s, notice_s, repeat_s, poll_s
        self.on_limit = on_limit
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ledger = None

    def __enter__(self) -> "ResourceWatch":
        import ray

        if getattr(_watching, "active", False):
            return self
        _watching.active = True
        self._own_ledger = _ledger() is None  # a ledger opened by someone else (a test session) stays
        self._ledger = open_ledger()
        self._job_id = ray.get_runtime_context().get_job_id()
        self._thread = threading.Thread(target=self._run, name="bgwsol-resource-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=2 * STATE_TIMEOUT_S)
        _watching.active = False
        if not self._own_ledger:
            return
        import ray

        try:
            ray.kill(self._ledger)
        except Exception as error:  # Ray already shut down: the ledger went with it
            log.debug("ledger: %s", error)

    def _run(self) -> None:
        import ray

        since, last_line, clear_looks = None, -float("inf"), 0
        while not self._stop.wait(self.poll_s):
            try:
                for line in ray.get(self._ledger.drain_notices.remote(), timeout=30):
                    self.lines.append(line)
                    log.warning("%s", line)
                waiting = look(self._job_id, ray.get(self._ledger.overview.remote(), timeout=30))
            except Exception as error:  # the state API is busy or Ray is going down: look again later
                log.debug("resource watch: %s", error)
                continue
            now = time.monotonic()
            if not waiting.demands:
                clear_looks += 1
                if clear_looks >= 2:  # Ray Train replaces a timed-out placement group: a gap of one look is no break
                    since, last_line = None, -float("inf")
                continue
            clear_looks = 0
            since = now if since is None else since
            waited = now - since
            if 0 < self.limit_s <= waited:
                error = ResourceWaitTimeout(f"stopped after {waiting.line(waited)} (the bound is "
                                            f"--cluster.resource_wait_s {self.limit_s:g}; 0 waits forever)")
                self.lines.append(str(error))
                (self.on_limit or _stop_job)(error)
                return
            if waited >= self.notice_s and now - last_line >= self.repeat_s:
                last_line = now
                line = waiting.line(waited)
                self.lines.append(line)
                log.warning("%s", line)


def _stop_job(error: Exception) -> None:
    from bgwsol.errors import stop_job

    stop_job(error)


def release_in_background(run: str, grace_s: float = 30.0) -> threading.Thread:
    """:func:`release_run` in a daemon thread (the caller's loop goes on)."""

    def release() -> None:
        try:
            release_run(run, grace_s)
        except Exception as error:  # Ray going down with the job: nothing left to release
            log.debug("release of run %s: %s", run, error)

    thread = threading.Thread(target=release, name=f"bgwsol-release-{run}", daemon=True)
    thread.start()
    return thread
