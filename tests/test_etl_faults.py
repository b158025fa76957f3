"""The ETL under faults: two jobs on one shard prefix, and an S3 store that goes away mid-write.

Faults are real: two writers race in two threads; the outage is a TCP proxy in front of a moto
server that drops every connection and closes its port at a chosen request, and the server is
stopped behind it.
"""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pytest

from bgwsol.data.shards.etl import ShardConfig, dataset_listings, write_shard_set
from bgwsol.data.shards.shardset import LOCK_NAME, MANIFEST_NAME, ShardSet, ShardSetError
from bgwsol.data.shards.writelock import LockRecord, PrefixBusy, acquire, release
from bgwsol.data.storage import Location
from conftest import FLOWS, free_port, load_flow

pytestmark = [pytest.mark.ray, pytest.mark.s3]

CFG = ShardConfig(max_short_side=48, samples_per_shard=5)
HOST = socket.gethostname()



def write_lock(prefix: str, host: str, pid: int, token: str = "theirs") -> Location:
    """Put a lock object as another job would have left it; returns its location."""
    lock = Location.parse(prefix).join(LOCK_NAME)
    lock.write_bytes(LockRecord(host, pid, "2026-01-02T03:04:05+00:00", token).to_bytes())
    return lock


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def objects(prefix: Location) -> dict[str, bytes]:
    return {n: prefix.join(n).read_bytes() for n in prefix.list_names()}


# ------------------------------------------------------------------------------ two writers

@pytest.mark.parametrize("where", ["s3", "local"])
def test_the_lock_admits_one_of_many_concurrent_takers(bucket, tmp_path, where):
    prefix = Location.parse(f"s3://{bucket}/p" if where == "s3" else tmp_path / "p")
    if not prefix.is_s3:
        os.makedirs(prefix.fs_path)
    barrier = threading.Barrier(6)

    def take(_):
        barrier.wait()
        try:
            return acquire(prefix)
        except PrefixBusy as exc:
            return exc

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(take, range(6)))
    held = [g for g in got if isinstance(g, LockRecord)]
    assert len(held) == 1 and all(isinstance(g, PrefixBusy) for g in got if g is not held[0])
    assert LockRecord.from_bytes(prefix.join(LOCK_NAME).read_bytes()) == held[0]
    release(prefix, held[0])
    assert LOCK_NAME not in prefix.list_names()


def test_two_jobs_on_one_s3_prefix_one_commits_the_other_stops(tiny_synthetic, ray_local, bucket):
    """Two write_shard_set calls start together on one prefix with different settings: one commits,
    the other raises PrefixBusy naming the holder and the lock, and wrote nothing."""
    paths, _ = tiny_synthetic
    listings, classes, names = dataset_listings("cub", paths.cub, CFG.val_fraction)
    url = f"s3://{bucket}/cub"
    cfgs = {"a": CFG, "b": ShardConfig(max_short_side=40, samples_per_shard=3)}
    barrier = threading.Barrier(2)

    def job(name: str):
        barrier.wait()
        try:
            return write_shard_set(listings, url, dataset="cub", classes=classes, class_names=names, cfg=cfgs[name])
        except PrefixBusy as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        outcome = dict(zip(cfgs, pool.map(job, cfgs)))
    winners = [k for k, v in outcome.items() if isinstance(v, ShardSet)]
    losers = [k for k, v in outcome.items() if isinstance(v, PrefixBusy)]
    assert len(winners) == 1 and len(losers) == 1, outcome
    message = str(outcome[losers[0]])
    assert "\n" not in message
    assert re.fullmatch(rf"{re.escape(url)}: being written by another job \(host {re.escape(HOST)}, pid {os.getpid()}, "
                        rf"started 20\d\d-\d\d-\d\dT[0-9:]+\+00:00\); wait for it, or if that job is gone, "
                        rf"delete {re.escape(url)}/{LOCK_NAME} and rerun", message), message
    committed = ShardSet.open(url)
    assert committed.manifest["etl"] == asdict(cfgs[winners[0]]) and committed.digest == outcome[winners[0]].digest
    committed.verify(checksums=True)  # no shard of the loser overwrote one of the winner's
    listed = {s["name"] for split in committed.splits for s in committed.shards(split)}
    present = set(Location.parse(url).list_names())
    assert {n for n in present if n.endswith(".tar")} == listed  # and the loser added none
    assert LOCK_NAME not in present and LOCK_NAME not in json.dumps(committed.manifest)


def test_a_stale_lock_on_s3_is_taken_over_and_a_foreign_one_is_not(tiny_synthetic, ray_local, bucket, caplog):
    paths, _ = tiny_synthetic
    listings, classes, _ = dataset_listings("cub", paths.cub, CFG.val_fraction)
    url = f"s3://{bucket}/cub"
    # a lock from another host is never taken over: that job may be alive, and only the user can know
    lock = write_lock(url, "another-host", dead_pid())
    with pytest.raises(PrefixBusy, match=rf"host another-host, .* delete {re.escape(lock.url)} and rerun"):
        write_shard_set(listings, url, dataset="cub", classes=classes, cfg=CFG)
    assert Location.parse(url).list_names() == [LOCK_NAME]
    # a lock left by a process of this host that has exited: taken over with a warning
    gone = dead_pid()
    write_lock(url, HOST, gone)
    with caplog.at_level(logging.WARNING, logger="bgwsol.data.shards.writelock"):
        shards = write_shard_set(listings, url, dataset="cub", classes=classes, cfg=CFG)
    assert f"taking over the write lock of a job that is gone (host {HOST}, pid {gone}," in caplog.text
    shards.verify(checksums=True)
    assert LOCK_NAME not in Location.parse(url).list_names()


def test_a_local_prefix_held_by_a_live_job_is_left_untouched(tiny_synthetic, ray_local, tmp_path, caplog):
    """Local folder: a live holder (this host, a live pid) stops a second job before it deletes the
    manifest or writes a shard; once the holder is gone its lock is taken over."""
    paths, _ = tiny_synthetic
    listings, classes, _ = dataset_listings("cub", paths.cub, CFG.val_fraction)
    out = tmp_path / "cub"
    first = write_shard_set(listings, out, dataset="cub", classes=classes, cfg=CFG)
    before = objects(first.location)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = write_lock(str(out), HOST, holder.pid)
        other = ShardConfig(max_short_side=40, samples_per_shard=3)
        with pytest.raises(PrefixBusy, match=rf"pid {holder.pid}, started 2026-01-02T03:04:05\+00:00\); .* "
                                             rf"delete {re.escape(lock.url)} and rerun"):
            write_shard_set(listings, out, dataset="cub", classes=classes, cfg=other)
        after = objects(first.location)
        assert after.pop(LOCK_NAME) and after == before  # manifest and shards as they were
        assert ShardSet.open(str(out)).digest == first.digest  # readers see the committed set, not the lock
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="bgwsol.data.shards.writelock"):
        second = write_shard_set(listings, out, dataset="cub", classes=classes, cfg=other)
    assert f"pid {holder.pid}" in caplog.text
    assert second.manifest["etl"] == asdict(other) and not (out / LOCK_NAME).exists()
    second.verify(checksums=True)


# ------------------------------------------------------------------------------ store outage

class OutageProxy:
    """A TCP proxy to an S3 endpoint that lets the first shard upload through, holds the second one
    and, on :meth:`cut`, drops every connection and closes its port: the store is gone."""

    SHARD_PUT = re.compile(rb"PUT /[^ ]*\.tar(\?[^ ]*)? HTTP/1\.1\r\n")

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.shard_puts, self.conns, self.lock = 0, [], threading.Lock()
        self.holding, self.gone = threading.Event(), threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed by cut()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                break
            if not data:
                break
            if requests and self.SHARD_PUT.search(data):
                with self.lock:
                    self.shard_puts += 1
                    later = self.shard_puts > 1
                if later:  # hold it until the store goes away
                    self.holding.set()
                    self.gone.wait(60)
                    break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            _close(s)

    def cut(self) -> None:
        self.gone.set()
        _close(self.listener)
        with self.lock:
            for s in self.conns:
                _close(s)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _moto(port: int):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def _shard_names(client, bucket: str, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return [o["Key"].rsplit("/", 1)[1] for o in listed]


def test_the_store_going_away_mid_etl_fails_in_one_line_and_a_rerun_completes(
        tiny_synthetic, ray_local, bucket, monkeypatch, tmp_path, caplog):
    """``flows/shard_cub.py`` as a user runs it (its own process, a driver on the session's Ray
    cluster as ``ray job submit`` would make it) writes through a proxy to a moto server; once
    the first shard is stored, the proxy drops every connection and the server stops. The job
    exits 1 within a bounded time, its last stderr line is one ``error:`` line naming the shard's
    s3:// URL, no traceback is printed, and no manifest is committed. With the store back, a
    rerun takes over the lock the failed job could not remove and commits the manifest and
    shards of an undisturbed run, byte for byte."""
    paths, _ = tiny_synthetic
    flow = load_flow("shard_cub")
    flags = ["--source", str(paths.cub), "--etl.max_short_side", "48", "--etl.samples_per_shard", "2"]
    assert flow.main([*flags, "--output", f"s3://{bucket}/undisturbed"]) == 0  # the session's store
    reference = ShardSet.open(f"s3://{bucket}/undisturbed")

    port = free_port()
    moto, proxy, client = _moto(port), None, _client(port)
    _ensure_bucket(client, bucket)
    proxy = OutageProxy(port)
    url = f"s3://{bucket}/outage"
    # joining the running cluster saves starting a second Ray on 2 cores; the shard writes take
    # the job's endpoint along in their pickled filesystem, whatever the workers' environment says
    env = os.environ | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
                        "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    with open(tmp_path / "stderr", "w+") as err_file:
        job = subprocess.Popen([sys.executable, str(FLOWS / "shard_cub.py"), *flags, "--output", url],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            assert proxy.holding.wait(90), "the job never started a second shard upload"
            deadline = time.monotonic() + 20
            while not (stored := [n for n in _shard_names(client, bucket, "outage") if n.endswith(".tar")]):
                assert time.monotonic() < deadline, "the first shard never arrived"
                time.sleep(0.05)
            proxy.cut()
            moto.stop()
            gone = time.monotonic()
            rc = job.wait(120)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        failed_after = time.monotonic() - gone
        err_file.seek(0)
        err = err_file.read()
    assert rc == 1 and failed_after < 120, (rc, failed_after, err[-3000:])
    last = err.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(rf"(shard_cub: )?error: {re.escape(url)}/[a-z]+-\d{{6}}\.tar: cannot reach the S3 endpoint "
                        rf"http://127\.0\.0\.1:{proxy.port} .*", last), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"could not remove the write lock {url}/{LOCK_NAME}" in err

    # the store is back at the same address; moto keeps its objects in this process, so the
    # rerun meets what the failed job left: some shards, its lock, no manifest
    moto = _moto(port)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        _ensure_bucket(client, bucket)
        left = _shard_names(client, bucket, "outage")
        assert MANIFEST_NAME not in left and LOCK_NAME in left and set(stored) <= set(left)
        with pytest.raises(ShardSetError, match=rf"did not finish.*an ETL is writing it or died while writing it "
                                                rf"\({re.escape(url)}/{LOCK_NAME}\)"):
            ShardSet.open(url)
        with caplog.at_level(logging.WARNING, logger="bgwsol.data.shards.writelock"):
            assert flow.main([*flags, "--output", url]) == 0
        assert f"taking over the write lock of a job that is gone (host {HOST}, pid {job.pid}," in caplog.text
        again = ShardSet.open(url)
        assert again.manifest == reference.manifest and again.digest == reference.digest
        for split in reference.splits:
            assert [s["sha256"] for s in again.shards(split)] == [s["sha256"] for s in reference.shards(split)]
        again.verify(checksums=True)
        assert LOCK_NAME not in _shard_names(client, bucket, "outage")
    finally:
        moto.stop()


def _client(port: int):
    """A boto3 client straight to the moto server (not through the proxy)."""
    import boto3

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _ensure_bucket(client, bucket: str) -> None:
    """Create ``bucket`` on a store that does not have it (a fresh server)."""
    if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=bucket)
