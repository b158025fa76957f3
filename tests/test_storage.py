"""Storage: one code path for local folders and S3 endpoints, and clear errors naming the URL."""

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time

import pytest

from bgwsol.data.storage import Location, StorageError, check_access, open_url, register_webdataset_opener
from tests.conftest import free_port

pytestmark = pytest.mark.s3


def test_local_roundtrip_and_listing(tmp_path):
    loc = check_access(tmp_path / "out", writable=True)
    loc.join("a.txt").write_bytes(b"x")
    loc.join("b.tar").write_bytes(b"yy")
    assert loc.list_names() == ["a.txt", "b.tar"]
    assert loc.join("b.tar").size() == 2 and loc.join("a.txt").read_bytes() == b"x"
    loc.join("a.txt").delete()
    assert not loc.join("a.txt").exists() and loc.join("a.txt").size() is None


def test_local_errors_name_the_path(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        check_access(tmp_path / "missing")
    with pytest.raises(StorageError, match="not found|no such"):
        Location.parse(tmp_path / "nope.json").read_bytes()
    with pytest.raises(StorageError, match="unsupported scheme"):
        Location.parse("gs://bucket/x")


def test_s3_roundtrip_through_endpoint_variable(bucket):
    loc = check_access(f"s3://{bucket}/pre/fix", writable=True)
    loc.join("k/v.json").write_bytes(b'{"a": 1}')
    assert json.loads(loc.join("k/v.json").read_bytes()) == {"a": 1}
    assert loc.join("k").list_names() == ["v.json"]
    assert Location.parse(f"s3://{bucket}/pre/fix/").url == f"s3://{bucket}/pre/fix"


def test_s3_missing_bucket_and_key(s3_endpoint):
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        check_access("s3://no-such-bucket/x")
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x/y.json: not found"):
        Location.parse("s3://no-such-bucket/x/y.json").read_bytes()


def test_s3_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(StorageError, match=r"s3://bkt/p: cannot reach the S3 endpoint http://127.0.0.1:\d+"):
        check_access("s3://bkt/p")
    with pytest.raises(StorageError, match=r"s3://bkt/p/x.jpg: cannot reach the S3 endpoint http://127.0.0.1:\d+"):
        Location.parse("s3://bkt/p/x.jpg").read_bytes()  # the one-GET path (boto3), as the ETL reads images


def test_endpoint_s3_variable_wins(monkeypatch, bucket):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", os.environ["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    check_access(f"s3://{bucket}/x", writable=True)


def test_s3_wrong_credentials(tmp_path, monkeypatch):
    """A separate server that enforces IAM: a wrong secret is reported as access denied."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):  # wait for the port without spending one of the unauthenticated actions
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
        boto3.client("s3", **kw).create_bucket(Bucket="guarded")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="u")
        key = iam.create_access_key(UserName="u")["AccessKey"]
        iam.put_user_policy(UserName="u", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        check_access("s3://guarded/p", writable=True)  # the right key works
        Location.parse("s3://guarded/p/x.jpg").write_bytes(b"jpeg")
        assert Location.parse("s3://guarded/p/x.jpg").read_bytes() == b"jpeg"
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        with pytest.raises(StorageError, match=r"s3://guarded/p: access denied: check AWS_ACCESS_KEY_ID"):
            check_access("s3://guarded/p")
        with pytest.raises(StorageError, match=r"s3://guarded/p/x.jpg: access denied: check AWS_ACCESS_KEY_ID"):
            Location.parse("s3://guarded/p/x.jpg").read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)


def test_webdataset_reads_s3_tar(bucket):
    import webdataset as wds

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key in ("a", "b"):
            data = key.encode() * 3
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    Location.parse(f"s3://{bucket}/t/s-000000.tar").write_bytes(buf.getvalue())
    register_webdataset_opener()
    got = [(s["__key__"], s["txt"]) for s in wds.WebDataset(f"s3://{bucket}/t/s-000000.tar", shardshuffle=False)]
    assert got == [("a", b"aaa"), ("b", b"bbb")]
    with pytest.raises(StorageError, match="not found"):
        open_url(f"s3://{bucket}/t/missing.tar")


def test_source_tree_lists_past_one_page_and_matches_a_folder(bucket, tmp_path):
    """A recursive listing of an s3:// prefix follows S3's pagination (1,000 keys a page), sees only
    files below the prefix (not a sibling sharing its first letters), and equals the folder's."""
    from concurrent.futures import ThreadPoolExecutor

    from bgwsol.data.sources.source_tree import SourceTree
    from bgwsol.data.storage import boto3_client

    names = [f"d{i % 7}/sub/{i:05d}.jpg" for i in range(1050)] + ["top.txt"]
    client = boto3_client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"raw/{n}", Body=b"x"), names))
    client.put_object(Bucket=bucket, Key="raw2/d0/not-mine.jpg", Body=b"x")
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    remote, local = SourceTree(f"s3://{bucket}/raw"), SourceTree(tmp_path)
    assert remote.files("") == local.files("") == sorted(names)
    assert remote.files("d3") == local.files("d3") == sorted(n[3:] for n in names if n.startswith("d3/"))
    assert remote.files("nope") == local.files("nope") == []
    assert remote.is_file("top.txt") and not remote.is_file("d0") and remote.exists()
    assert not SourceTree(f"s3://{bucket}/absent").exists()
    assert remote.read_text("top.txt") == "x"


def test_a_refused_connection_on_a_port_holding_403_is_unreachable_not_access_denied():
    """Seen in CI: the test server's random port 40375 made a refused connection read as HTTP 403,
    so the checkpoint probe failed at once instead of waiting for the store to come back."""
    from bgwsol.data.storage import _explain

    refused = OSError("When getting information for bucket 'b': AWS Error NETWORK_CONNECTION during HeadBucket "
                      "operation: curlCode: 7, Could not connect to server; Details: Failed to connect to "
                      "127.0.0.1 port 40375 after 0 ms: Could not connect to server")
    said = _explain("s3://b/x", refused, "http://127.0.0.1:40375")
    assert said.unreachable and "cannot reach the S3 endpoint" in str(said)
    denied = _explain("s3://b/x", OSError("AWS Error UNKNOWN (HTTP status 403) during HeadBucket operation"))
    assert not denied.unreachable and "access denied" in str(denied)
    assert "access denied" in str(_explain("s3://b/x", OSError("An error occurred (AccessDenied) when calling")))
