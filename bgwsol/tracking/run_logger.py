"""One MLflow run that survives its tracking server going away: :class:`RunLogger` holds what it
could not log (in memory and in a file of its spool folder, artifacts copied there), logs it when
the server answers again, waits a bounded time for it at the run's end, and otherwise leaves the
file, with the command that logs it later (:func:`replay_unlogged`).

Only rank 0 of a run logs. Everything goes through an explicit :class:`mlflow.MlflowClient`
(no fluent global state), so a resumed Ray Train worker continues the same MLflow run by its id
(kept in the checkpoint). The calls that may be abandoned (:class:`~bgwsol.tracking.runs.Attempt`)
and the server's health check are :mod:`bgwsol.tracking.runs`'.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgwsol.tracking import runs  # its probe intervals, read at each use (one place to set them)
from bgwsol.tracking.runs import (Attempt, TrackingConfig, TrackingUnavailable, redact_url, refused, resolve_uri,
                                  server_answers)

log = logging.getLogger(__name__)

EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
UNLOGGED_TAG = "bgwsol.unlogged"        # records of the run not logged (0 once replay_unlogged logged them)
LATE_TAG = "bgwsol.logged_late"         # records held while the server was away and logged when it came back


@dataclass
class _Record:
    """One call to the run: ``kind`` (metrics, params, tags, artifact, status) and its JSON data."""

    kind: str
    data: dict
    held: bool = False                      # it waited for the server at least once
    attempt: Attempt | None = field(default=None, repr=False)


def _deliver(client, run_id: str, kind: str, data: dict) -> None:
    """Make one recorded call. Every kind can be repeated: a metric keeps the timestamp it was
    recorded with, and MLflow keeps one row per (key, step, timestamp, value)."""
    from mlflow.entities import Metric, Param, RunTag

    if kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, data["timestamp"], data["step"])
                                          for k, v in data["values"].items()], synchronous=True)
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in data["params"].items()], synchronous=True)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in data["tags"].items()], synchronous=True)
    elif kind == "artifact":
        client.log_artifact(run_id, data["file"], data["artifact_path"])
    elif kind == "inputs":
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        inputs = [DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], json.dumps({"uri": d["url"]})),
                               tags=[InputTag("mlflow.data.context", d["context"])]) for d in data["datasets"]]
        try:
            client.log_inputs(run_id, datasets=inputs)
        except MlflowException as exc:
            # two runs of one experiment (Tune's trials, started together) recording the same shard set:
            # the SQL store creates the dataset row for one and refuses the other's insert. The row
            # exists now, so the second try only links it to this run.
            if "UNIQUE constraint failed: datasets" not in str(exc):
                raise
            time.sleep(0.5)
            client.log_inputs(run_id, datasets=inputs)
    elif kind == "status" and data["status"] == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    elif kind == "status":
        client.set_terminated(run_id, status=data["status"], end_time=data["end_time"])
    else:
        raise ValueError(f"unknown record kind {kind!r}")


def _missing(records: list[dict]) -> dict:
    """What ``records`` would have logged: metric keys with their steps, params, tags, artifacts, status."""
    metrics: dict[str, list[int]] = {}
    out: dict[str, Any] = {"metrics": metrics, "params": [], "tags": {}, "artifacts": [], "status": None}
    for r in records:
        if r["kind"] == "metrics":
            for k in r["values"]:
                metrics.setdefault(k, []).append(r["step"])
        elif r["kind"] == "params":
            out["params"] += list(r["params"])
        elif r["kind"] == "tags":
            out["tags"].update(r["tags"])
        elif r["kind"] == "inputs":
            out["tags"].update({f"input {d['name']}": d["url"] for d in r["datasets"]})
        elif r["kind"] == "artifact":
            out["artifacts"].append("/".join(filter(None, [r["artifact_path"], Path(r["file"]).name])))
        elif r["kind"] == "status":
            out["status"] = r["status"]
    return out


def _describe(records: list[dict]) -> str:
    """One line for people, e.g. ``metrics at steps 1, 2, 6; artifacts overlays/x.png; run status FINISHED``."""
    missing, parts = _missing(records), []
    steps = sorted({s for steps in missing["metrics"].values() for s in steps})
    if steps:
        parts.append("metrics at steps " + ", ".join(map(str, steps[:12])) + (", ..." if len(steps) > 12 else ""))
    if missing["params"]:
        parts.append(f"{len(missing['params'])} params")
    if missing["tags"]:
        parts.append("tags " + ", ".join(missing["tags"]))
    if missing["artifacts"]:
        arts = missing["artifacts"]
        parts.append("artifacts " + ", ".join(arts[:4]) + (", ..." if len(arts) > 4 else ""))
    if missing["status"]:
        parts.append(f"run status {missing['status']}")
    return "; ".join(parts)


def replay_command(path: str | Path) -> str:
    """The command that logs an unlogged-records file once its server answers (:func:`replay_unlogged`)."""
    return f"python -c \"from bgwsol.tracking.run_logger import replay_unlogged; replay_unlogged('{path}')\""


def replay_unlogged(path: str | Path, tracking_uri: str | None = None) -> int:
    """Log what a run could not (the file :meth:`RunLogger.end` left) to its MLflow run; returns
    the number of records. ``tracking_uri`` replaces the file's (which has any password as
    ``***``; then ``MLFLOW_TRACKING_URI`` is used). The file is renamed ``*.replayed.json``."""
    from mlflow import MlflowClient

    path = Path(path)
    doc = json.loads(path.read_text())
    uri = tracking_uri or doc["tracking_uri"]
    if "***" in uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            raise ValueError(f"{path} names the server {doc['tracking_uri']} without its password: "
                             "give tracking_uri (or set MLFLOW_TRACKING_URI)")
    client = MlflowClient(tracking_uri=uri)
    for record in doc["records"]:
        data = {k: v for k, v in record.items() if k != "kind"}
        if record["kind"] == "artifact":
            data["file"] = str(path.parent / data["file"])  # a relative path is the spool's copy
        _deliver(client, doc["run_id"], record["kind"], data)
    n = len(doc["records"])
    client.log_batch(doc["run_id"], tags=[_tag(UNLOGGED_TAG, "0"), _tag("bgwsol.replayed", str(n))], synchronous=True)
    shutil.rmtree(path.parent / path.stem, ignore_errors=True)  # the artifact copies
    path.rename(path.with_name(f"{path.stem}.replayed.json"))
    log.info("logged %d records to MLflow run %s (%s)", n, doc["run_id"], redact_url(uri))
    return n


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)


class RunLogger:
    """One MLflow run: ``start`` (or continue by id), log, ``end``. A no-op when no URI is set.

    A server that goes away does not hold training up. A call waits about :data:`~bgwsol.tracking.runs.PROBE_AFTER_S`
    once the server stops answering /health; what it could not log is held, with one warning,
    in memory and in ``unlogged_<run id>.json`` under ``spool_dir`` (artifacts copied beside
    it), and later calls only add to it (asking /health at most every :data:`~bgwsol.tracking.runs.PROBE_EVERY_S`).
    The held records go out, oldest first, as soon as the server answers, and the run gets the
    tag ``bgwsol.logged_late``. :meth:`end` waits up to ``cfg.flush_timeout_s`` for them; what
    is still held then stays in the file, and one warning says what and gives the command that
    logs it later. A logger that continues a run (``run_id``) first logs what an earlier
    attempt of it left in ``spool_dir``. Give ``spool_dir`` as the run's own folder (beside its
    checkpoints); by default it is a new temporary folder.
    """

    def __init__(self, cfg: TrackingConfig, run_name: str, run_id: str | None = None, parent_run_id: str | None = None,
                 spool_dir: str | Path | None = None):
        self.uri = resolve_uri(cfg)
        self.cfg, self.run_name, self.run_id, self.parent_run_id = cfg, run_name, run_id, parent_run_id
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self.client = None
        self.logged_late = 0
        self._held: list[_Record] = []
        self._away_since: float | None = None   # time.monotonic() the server was found away; None while it answers
        self._next_probe = 0.0
        self._spooled = 0

    @property
    def enabled(self) -> bool:
        return bool(self.uri)

    @property
    def held(self) -> int:
        """Records waiting for the server."""
        return len(self._held)

    @property
    def unlogged_file(self) -> Path | None:
        """Where the held records are kept while the server is away (and after the run, if it stays away)."""
        return self.spool_dir / f"unlogged_{self.run_id}.json" if self.spool_dir and self.run_id else None

    def start(self, params: dict | None = None, tags: dict | None = None) -> str | None:
        """Create the run (or reopen ``run_id``); returns its id. A new run needs the server:
        raises :class:`TrackingUnavailable` if it does not answer within ``cfg.flush_timeout_s``."""
        if not self.enabled:
            return None
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if self.run_id:
            self._load_unlogged()
            self._log(_Record("status", {"status": "RUNNING"}))
            return self.run_id
        self.run_id = self._create_run(tags or {})
        items = {k: str(v)[:6000] for k, v in (params or {}).items()}
        keys = list(items)
        for i in range(0, len(keys), 100):  # MLflow takes at most 100 params per batch
            self._held.append(_Record("params", {"params": {k: items[k] for k in keys[i:i + 100]}}))
        self._flush()
        return self.run_id

    def _create_run(self, tags: dict) -> str:
        def create() -> str:
            exp = self.client.get_experiment_by_name(self.cfg.experiment)
            if exp is None:
                exp_id = self.client.create_experiment(self.cfg.experiment, tags={EXPERIMENT_KIND: TRAINING_KIND})
            else:
                exp_id = exp.experiment_id
                if EXPERIMENT_KIND not in exp.tags:  # MLflow 3 opens an experiment without a kind on its GenAI view
                    self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND, TRAINING_KIND)
            all_tags = {"mlflow.runName": self.run_name, **tags}
            if self.parent_run_id:
                all_tags["mlflow.parentRunId"] = self.parent_run_id
            return self.client.create_run(exp_id, tags=all_tags, run_name=self.run_name).info.run_id

        # one attempt, waited for (MLflow's client reconnects meanwhile): a second could open a second run
        attempt = Attempt(create)
        if not attempt.finished.wait(self.cfg.flush_timeout_s):
            raise TrackingUnavailable(f"MLflow tracking server {redact_url(self.uri)} did not open run {self.run_name} "
                                      f"within {self.cfg.flush_timeout_s:.0f} s (--tracking.flush_timeout_s)")
        if attempt.error is not None:
            raise attempt.error
        return attempt.value

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.client:
            return
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if values:
            self._log(_Record("metrics", {"step": int(step), "timestamp": int(time.time() * 1000), "values": values}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.client:
            self._log(_Record("artifact", {"file": str(Path(path).resolve()), "artifact_path": artifact_path}))

    def log_inputs(self, datasets: list[dict]) -> None:
        """Record the shard sets the run reads as MLflow dataset inputs (the runs table's Dataset
        column, the model's lineage). Each dict: ``name``, ``url`` (where the shard set is),
        ``digest`` (its manifest's SHA-256), ``context`` (``training``, ``background``)."""
        if self.client and datasets:
            self._log(_Record("inputs", {"datasets": [
                {**d, "digest": d["digest"][:36], "source_type": "s3" if d["url"].startswith("s3://") else "local"}
                for d in datasets]}))

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.client and tags:
            self._log(_Record("tags", {"tags": {k: str(v) for k, v in tags.items()}}))

    def end(self, status: str = "FINISHED") -> Path | None:
        """Terminate the run once everything held is logged, waiting up to ``cfg.flush_timeout_s``
        for a server that went away. Returns the file of what could not be logged (None: all was)."""
        if not self.client:
            return None
        self._log(_Record("status", {"status": status, "end_time": int(time.time() * 1000)}), flush=False)
        wait_s = self.cfg.flush_timeout_s
        if self._away_since is not None:
            log.info("waiting up to %.0f s for MLflow server %s to log %d held records", wait_s,
                     redact_url(self.uri), len(self._held))
        deadline = time.monotonic() + wait_s
        self._drain(deadline)
        if not self._held and self.logged_late:
            self._log(_Record("tags", {"tags": {LATE_TAG: str(self.logged_late)}}), flush=False)
            self._drain(deadline)
        if not self._held:
            return None
        held = [self._json(r) for r in self._held]
        path = self._save(f"the MLflow server did not take them by the end of the run (waited {wait_s:.0f} s)")
        if server_answers(self.uri):  # it answers but did not take them: the run says so
            tags = {UNLOGGED_TAG: str(len(held)), "bgwsol.unlogged_file": str(path)}
            answer = Attempt(lambda: _deliver(self.client, self.run_id, "tags", {"tags": tags}))
            answer.wait(self.uri, time.monotonic() + 10)
        log.warning("MLflow server %s: %d records of run %s (%s) were not logged: %s. They are kept in %s; "
                    "log them once the server answers with: %s", redact_url(self.uri), len(held), self.run_name,
                    self.run_id, _describe(held), path, replay_command(path))
        return path

    # ------------------------------------------------------------------ held records

    def _log(self, record: _Record, flush: bool = True) -> None:
        self._held.append(record)
        if self._away_since is not None:
            self._hold(record)
        if flush:
            self._flush()

    def _flush(self, until: float | None = None) -> None:
        """Log the held records, oldest first, while the server takes them."""
        if self._away_since is not None:
            now = time.monotonic()
            if now < self._next_probe:
                return
            self._next_probe = now + runs.PROBE_EVERY_S
            if not server_answers(self.uri):
                self._save()
                return
        late = 0
        while self._held:
            record = self._held[0]
            if not self._send(record, until or time.monotonic() + runs.SLOW_CALL_S):
                self._went_away()
                return
            self._held.pop(0)
            late += record.held
        self.logged_late += late
        if self._away_since is not None:
            log.info("MLflow server %s answers again after %.0f s: the %d records held meanwhile are logged",
                     redact_url(self.uri), time.monotonic() - self._away_since, late)
            self._away_since = None
        if self.unlogged_file is not None and self.unlogged_file.exists():
            self.unlogged_file.unlink()
            shutil.rmtree(self.unlogged_file.with_suffix(""), ignore_errors=True)

    def _send(self, record: _Record, until: float) -> bool:
        """True once ``record`` is logged; False (record held) while the server is away."""
        if record.attempt is not None and record.attempt.succeeded:  # an attempt given up on got through later
            return True
        record.attempt = Attempt(lambda: _deliver(self.client, self.run_id, record.kind, record.data))
        if record.attempt.wait(self.uri, until):
            error = record.attempt.error
            if error is None:
                return True
            if refused(error) or server_answers(self.uri):
                # not a server that went away (a refused request, a missing file): as without a hold
                self._held.remove(record)
                raise error
        self._hold(record)
        return False

    def _hold(self, record: _Record) -> None:
        record.held = True
        if record.kind != "artifact":
            return
        src, spool = Path(record.data["file"]), self._spool()
        if not src.is_relative_to(spool):  # the caller may delete its file once the call returns
            self._spooled += 1
            dest = self.unlogged_file.with_suffix("") / f"{self._spooled:05d}" / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            record.data["file"] = str(dest)

    def _went_away(self) -> None:
        for record in self._held:
            self._hold(record)
        if self._away_since is None:
            self._away_since = time.monotonic()
            log.warning("MLflow server %s unreachable; training continues, %d records held to log later (kept in %s "
                        "meanwhile)", redact_url(self.uri), len(self._held), self.unlogged_file)
        self._next_probe = time.monotonic() + runs.PROBE_EVERY_S
        self._save()

    def _drain(self, deadline: float) -> None:
        """Flush, asking the server about every second, until nothing is held or ``deadline``."""
        while True:
            self._next_probe = 0.0
            self._flush(until=deadline)
            left = deadline - time.monotonic()
            if not self._held or left <= 0:
                return
            time.sleep(min(1.0, left))

    def _spool(self) -> Path:
        if self.spool_dir is None:
            import tempfile

            self.spool_dir = Path(tempfile.mkdtemp(prefix="bgwsol-mlflow-"))
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        return self.spool_dir

    def _json(self, record: _Record) -> dict:
        data = dict(record.data)
        if record.kind == "artifact" and Path(data["file"]).is_relative_to(self._spool()):
            data["file"] = str(Path(data["file"]).relative_to(self.spool_dir))
        return {"kind": record.kind, **data}

    def _save(self, reason: str = "held while the MLflow server is away") -> Path:
        """Write the held records to :attr:`unlogged_file` (replaced whole, never half-written)."""
        self._spool()
        path = self.unlogged_file
        records = [self._json(r) for r in self._held]
        doc = {"run_id": self.run_id, "run_name": self.run_name, "experiment": self.cfg.experiment,
               "tracking_uri": redact_url(self.uri), "reason": reason, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "log_later": replay_command(path), "missing": _missing(records), "records": records}
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(doc, indent=1))
        partial.replace(path)
        return path

    def _load_unlogged(self) -> None:
        """Hold what an earlier attempt of this run could not log (it goes out with the next call)."""
        path = self.unlogged_file
        if path is None or not path.exists():
            return
        doc = json.loads(path.read_text())
        for record in doc["records"]:
            data = {k: v for k, v in record.items() if k != "kind"}
            if record["kind"] == "artifact":
                data["file"] = str(self.spool_dir / data["file"])
            self._held.append(_Record(record["kind"], data, held=True))
        self._spooled = len(list(path.with_suffix("").glob("*")))
        log.info("%d records an earlier attempt of run %s could not log (%s) go to MLflow now", len(self._held),
                 self.run_id, path)
