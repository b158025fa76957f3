"""One ETL writer per shard prefix: a lock object, ``_writing.json``, created only where none exists.

Two jobs sharding into the same prefix would delete each other's manifest and shards and could
commit a manifest listing the other's files. :func:`prefix_lock` creates the lock atomically
before the ETL touches anything: on S3 a conditional PUT (``If-None-Match: *``, honoured by AWS
S3 since 2024, MinIO and moto's server), in a local folder ``open(O_CREAT | O_EXCL)``. The loser
gets :class:`PrefixBusy` naming the holder (host, pid, start time) and the lock's URL.

A lock whose holder is gone stays behind (a killed job, a store that went away before the lock
could be removed). It is taken over, with a warning, when it was made on this host by a process
that is no longer alive, or by this process outside a write now in progress (an earlier call
that failed); then only the one taker whose replacement is still conditional on the stale lock
(``If-Match`` its ETag on S3, a rename locally) wins. A lock from another host is never taken
over: deleting it is the user's call, and the message says which object to delete.

Readers never see the lock: a manifest lists shards only, and readers list ``.tar`` names only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from bgwsol.data.shards.shardset import LOCK_NAME
from bgwsol.data.storage import Location, StorageError, boto_errors, s3_client, storage_errors

log = logging.getLogger(__name__)

# tokens of the locks this process holds now (a lock with our pid and another token is a leftover)
_HELD: set[str] = set()
_ATTEMPTS = 4  # create / inspect / take over rounds before giving up (each round is a few requests)


class PrefixBusy(StorageError):
    """Another job holds the write lock of a shard prefix."""


@dataclass(frozen=True)
class LockRecord:
    """What a lock object says about its holder; ``token`` tells two holders apart."""

    host: str
    pid: int
    started: str
    token: str

    @classmethod
    def mine(cls) -> "LockRecord":
        return cls(socket.gethostname(), os.getpid(), datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   uuid.uuid4().hex)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LockRecord | None":
        """The record, or None for bytes that are not one (a lock still being written locally)."""
        try:
            d = json.loads(data)
            return cls(str(d["host"]), int(d["pid"]), str(d["started"]), str(d["token"]))
        except (ValueError, KeyError, TypeError):
            return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    return True


def is_stale(rec: LockRecord) -> bool:
    """True for a lock whose holder is known to be gone: made on this host by a dead process, or
    by this process in a write that is over."""
    if rec.host != socket.gethostname():
        return False
    if rec.pid == os.getpid():
        return rec.token not in _HELD
    return not _pid_alive(rec.pid)


# ------------------------------------------------------------------ the two stores' primitives
# create(): True when the lock was made here, False when one exists. read(): (record or None,
# tag); record None and tag None: no lock. replace(): swap a stale lock (known by its tag) for
# ours; False when it changed meanwhile.

def _s3_key(lock: Location) -> tuple[str, str]:
    bucket, _, key = lock.fs_path.partition("/")
    return bucket, key


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _s3_put(lock: Location, data: bytes, **condition: str) -> bool:
    from botocore.exceptions import ClientError

    bucket, key = _s3_key(lock)
    with boto_errors(lock.url):
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, **condition)
            return True
        except ClientError as exc:
            # 412: the condition did not hold; 409: a concurrent conditional write won; 404: If-Match on a gone key
            if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404"):
                return False
            raise


def _s3_read(lock: Location) -> tuple[LockRecord | None, str | None]:
    from botocore.exceptions import ClientError

    bucket, key = _s3_key(lock)
    with boto_errors(lock.url):
        try:
            obj = s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise
        return LockRecord.from_bytes(obj["Body"].read()), obj["ETag"]


def _local_create(lock: Location, data: bytes) -> bool:
    with storage_errors(lock.url, "create"):
        try:
            fd = os.open(lock.fs_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True


def _local_read(lock: Location) -> tuple[LockRecord | None, str | None]:
    with storage_errors(lock.url, "read"):
        for _ in range(20):  # a lock just created may not hold its record yet: give its writer ~1 s
            try:
                with open(lock.fs_path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None, None
            rec = LockRecord.from_bytes(data)
            if rec is not None:
                return rec, rec.token
            time.sleep(0.05)
        return None, data.decode(errors="replace")


def _local_replace(lock: Location, tag: str, data: bytes) -> bool:
    aside = f"{lock.fs_path}.stale-{uuid.uuid4().hex[:8]}"
    with storage_errors(lock.url, "replace"):
        try:
            os.rename(lock.fs_path, aside)  # atomic: of several takers, one moves the stale lock
        except FileNotFoundError:
            return False
        rec, _ = _local_read(Location(aside, aside))
        if rec is None or rec.token != tag:  # moved a lock newer than the stale one: put it back
            try:
                os.link(aside, lock.fs_path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return _local_create(lock, data)


def _create(lock: Location, data: bytes) -> bool:
    return _s3_put(lock, data, IfNoneMatch="*") if lock.is_s3 else _local_create(lock, data)


def _read(lock: Location) -> tuple[LockRecord | None, str | None]:
    return _s3_read(lock) if lock.is_s3 else _local_read(lock)


def _replace(lock: Location, tag: str, data: bytes) -> bool:
    return _s3_put(lock, data, IfMatch=tag) if lock.is_s3 else _local_replace(lock, tag, data)


# --------------------------------------------------------------------------------- the lock

def busy_message(prefix: Location, lock: Location, holder: LockRecord | None) -> str:
    """The one-line report of a busy prefix: who holds it, and which object to delete if that job is gone."""
    who = (f"host {holder.host}, pid {holder.pid}, started {holder.started}" if holder
           else "holder unknown: the lock is unreadable")
    return (f"{prefix.url}: being written by another job ({who}); wait for it, or if that job is gone, "
            f"delete {lock.url} and rerun")


def acquire(prefix: Location) -> LockRecord:
    """Create the write lock of ``prefix``, taking over a stale one; raise :class:`PrefixBusy` if
    another job holds it."""
    lock, mine = prefix.join(LOCK_NAME), LockRecord.mine()
    _HELD.add(mine.token)  # before the lock exists: another thread of this process must not find it stale
    try:
        _take(prefix, lock, mine)
    except BaseException:
        _HELD.discard(mine.token)
        raise
    return mine


def _take(prefix: Location, lock: Location, mine: LockRecord) -> None:
    for _ in range(_ATTEMPTS):
        if _create(lock, mine.to_bytes()):
            return _confirm(prefix, lock, mine)
        holder, tag = _read(lock)
        if tag is None:
            continue  # released between our create and our read: try again
        if holder is None or not is_stale(holder):
            raise PrefixBusy(busy_message(prefix, lock, holder))
        log.warning("%s: taking over the write lock of a job that is gone (host %s, pid %d, started %s)",
                    prefix.url, holder.host, holder.pid, holder.started)
        if _replace(lock, tag, mine.to_bytes()):
            return _confirm(prefix, lock, mine)
    raise PrefixBusy(f"{prefix.url}: the write lock {lock.url} changed hands {_ATTEMPTS} times while this job "
                     "tried to take it: other jobs are starting on this prefix")


def _confirm(prefix: Location, lock: Location, mine: LockRecord) -> None:
    """Raise :class:`PrefixBusy` unless the lock just written holds our token.

    On S3 one read back (one request) catches a store that let two conditional writes both
    succeed: moto's server checks the condition and writes in two steps."""
    if lock.is_s3:
        rec, _ = _read(lock)
        if rec is None or rec.token != mine.token:
            raise PrefixBusy(busy_message(prefix, lock, rec))


def release(prefix: Location, mine: LockRecord) -> None:
    """Remove the lock if it is still ``mine``. Never raises: a store that went away keeps the lock,
    and the next run on this host takes it over."""
    lock = prefix.join(LOCK_NAME)
    _HELD.discard(mine.token)
    try:
        rec, _ = _read(lock)
        if rec is not None and rec.token == mine.token:
            lock.delete()
        else:
            log.warning("%s: the write lock is no longer this job's (%s); left as it is", lock.url,
                        f"pid {rec.pid} on {rec.host}" if rec else "gone")
    except StorageError as exc:
        log.warning("could not remove the write lock %s (%s); a rerun on this host takes it over, "
                    "elsewhere delete it by hand", lock.url, str(exc).splitlines()[0])


@contextmanager
def prefix_lock(prefix: Location) -> Iterator[LockRecord]:
    """Hold the write lock of ``prefix`` for the body (see the module docstring)."""
    mine = acquire(prefix)
    try:
        yield mine
    finally:
        release(prefix, mine)
