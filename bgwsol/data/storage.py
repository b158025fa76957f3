"""One way to reach object storage: ``s3://bucket/prefix`` (AWS S3, MinIO, a test server) or a local path.

Every consumer goes through :class:`Location`:

- Ray Data / Ray Train take ``(loc.filesystem(), loc.fs_path)``: a pyarrow filesystem plus a
  path without scheme;
- webdataset opens ``s3://`` URLs through :func:`register_webdataset_opener`;
- boto3 users call :func:`boto3_client`.

Endpoint and credentials come from the standard AWS variables: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (honoured here for pyarrow too, which alone ignores them),
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``. Failures become :class:`StorageError` naming the URL.
"""

from __future__ import annotations

import functools
import os
import posixpath
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from bgwsol.errors import UserError


class StorageError(UserError, OSError):
    """Storage that cannot be reached or used; the message names the URL and the likely cause.
    ``unreachable``: the endpoint did not answer (the one cause that a retry may cure)."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def is_s3(url: str | os.PathLike) -> bool:
    return str(url).startswith("s3://")


@dataclass(frozen=True)
class Location:
    """A storage root: ``s3://bucket/prefix`` or a local directory.

    Attributes:
        url: the URL as given (local paths made absolute).
        fs_path: the path the pyarrow filesystem understands (``bucket/prefix`` or ``/abs/dir``).
    """

    url: str
    fs_path: str

    @classmethod
    def parse(cls, url: str | os.PathLike) -> "Location":
        url = str(url)
        if is_s3(url):
            parsed = urlparse(url)
            if not parsed.netloc:
                raise StorageError(f"{url}: no bucket in the URL (expected s3://bucket/prefix)")
            path = posixpath.join(parsed.netloc, parsed.path.lstrip("/")).rstrip("/")
            return cls("s3://" + path, path)
        if "://" in url:
            raise StorageError(f"{url}: unsupported scheme (use s3://bucket/prefix or a local path)")
        path = str(Path(url).expanduser().resolve())
        return cls(path, path)

    @property
    def is_s3(self) -> bool:
        return is_s3(self.url)

    @property
    def bucket(self) -> str:
        return self.fs_path.split("/", 1)[0] if self.is_s3 else ""

    def join(self, *parts: str) -> "Location":
        return Location(posixpath.join(self.url, *parts), posixpath.join(self.fs_path, *parts))

    def filesystem(self) -> pafs.FileSystem:
        return s3_filesystem() if self.is_s3 else pafs.LocalFileSystem()

    # --------------------------------------------------------------- small-object helpers

    def read_bytes(self) -> bytes:
        """The whole object. On S3 one GET through boto3: pyarrow's input streams send a HEAD
        first, a second round trip per object (benchmarks/bench_etl_s3.py)."""
        if self.is_s3:
            return get_object(self.url)
        with storage_errors(self.url, "read"):
            with self.filesystem().open_input_stream(self.fs_path) as f:
                return f.read()

    def write_bytes(self, data: bytes) -> None:
        """Write a whole object (a new local file appears under a temporary name, then is renamed)."""
        with storage_errors(self.url, "write"):
            fs = self.filesystem()
            if self.is_s3:
                with fs.open_output_stream(self.fs_path) as f:
                    f.write(data)
                return
            Path(self.fs_path).parent.mkdir(parents=True, exist_ok=True)
            tmp = self.fs_path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.fs_path)

    def exists(self) -> bool:
        with storage_errors(self.url, "stat"):
            return self.filesystem().get_file_info(self.fs_path).type != pafs.FileType.NotFound

    def size(self) -> int | None:
        """Bytes of the object; None when there is none (one stat either way)."""
        with storage_errors(self.url, "stat"):
            info = self.filesystem().get_file_info(self.fs_path)
            return None if info.type == pafs.FileType.NotFound else info.size

    def delete(self) -> None:
        """Remove this object if it exists."""
        with storage_errors(self.url, "delete"):
            fs = self.filesystem()
            if fs.get_file_info(self.fs_path).type == pafs.FileType.File:
                fs.delete_file(self.fs_path)

    def list_sizes(self) -> dict[str, int]:
        """``{name: bytes}`` of the objects directly under this prefix (empty if it does not exist):
        on S3 one LIST request per 1,000 objects, where a stat per object is a round trip each."""
        with storage_errors(self.url, "list"):
            fs = self.filesystem()
            sel = pafs.FileSelector(self.fs_path, allow_not_found=True, recursive=False)
            return {posixpath.basename(i.path): i.size for i in fs.get_file_info(sel) if i.type == pafs.FileType.File}

    def list_names(self) -> list[str]:
        """Names of the objects directly under this prefix (empty if it does not exist)."""
        return sorted(self.list_sizes())


def s3_filesystem() -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with the endpoint, region and credentials of the environment."""
    kwargs: dict = {"region": region()}
    endpoint = endpoint_url()
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    # fail fast on an unreachable endpoint instead of pyarrow's long default retry loop
    kwargs["connect_timeout"] = float(os.environ.get("BGWSOL_S3_CONNECT_TIMEOUT", "5"))
    kwargs["request_timeout"] = float(os.environ.get("BGWSOL_S3_REQUEST_TIMEOUT", "60"))
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=8)
def _shared_client(endpoint: str | None, region_name: str, key_id: str | None, secret: str | None, token: str | None):
    # one client per process and credential set (boto3 clients are thread-safe; making one costs ~50 ms)
    return boto3_client(aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token)


def s3_client():
    """The process's shared boto3 S3 client for the endpoint and credentials of the environment now."""
    env = os.environ.get
    return _shared_client(endpoint_url(), region(), env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"),
                          env("AWS_SESSION_TOKEN"))


def get_object(url: str) -> bytes:
    """Bytes of the object at ``s3://bucket/key`` in one GET; StorageError naming ``url`` on failure."""
    bucket, _, key = Location.parse(url).fs_path.partition("/")
    with boto_errors(url):
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


class boto_errors:  # noqa: N801 - used as a lowercase context manager
    """Context manager turning botocore errors (refused, unreachable, missing) into StorageError naming the URL."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise StorageError(f"{self.url}: not found") from exc
            if code == "NoSuchBucket":
                bucket = Location.parse(self.url).bucket
                raise StorageError(f"{self.url}: not found (bucket {bucket!r} does not exist)") from exc
            raise _explain(self.url, exc) from exc
        if isinstance(exc, BotoCoreError):
            raise _explain(self.url, exc) from exc
        return False


def boto3_client(**kwargs):
    """A boto3 S3 client on the same endpoint (boto3 itself also reads ``AWS_ENDPOINT_URL*``)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url(), region_name=region(),
                        config=Config(connect_timeout=5, retries={"max_attempts": 3}), **kwargs)


def _explain(url: str, exc: BaseException, endpoint: str | None = None) -> StorageError:
    """A :class:`StorageError` naming ``url`` and the likely cause of ``exc`` in one line (pyarrow
    and the S3 client say it only in their messages); ``endpoint`` (default: the environment's)
    is the S3 endpoint the failed call went to."""
    import re

    endpoint = endpoint or endpoint_url()
    text = str(exc)
    low = text.lower()
    refused_connection = any(s in low for s in ("could not connect", "failed to connect", "connection refused"))
    # HTTP 403 as a number of its own: "port 40375" in a failed connection's message is not one
    if not refused_connection and (re.search(r"(?<![\d.:])403(?!\d)", low) or any(s in low for s in (
            "accessdenied", "access denied", "access_denied", "invalidaccesskeyid", "signaturedoesnotmatch",
            "forbidden"))):
        return StorageError(f"{url}: access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                            f"(endpoint {endpoint or 'AWS default'}) [{text.splitlines()[0]}]")
    if "nosuchbucket" in low or "bucket does not exist" in low or "does not exist" in low and "bucket" in low:
        return StorageError(f"{url}: bucket does not exist (endpoint {endpoint or 'AWS default'})")
    if any(s in low for s in ("curl", "connect", "timed out", "timeout", "unreachable", "resolve host",
                              "connection refused", "network")):
        return StorageError(f"{url}: cannot reach the S3 endpoint {endpoint or 'AWS default'} "
                            f"(set AWS_ENDPOINT_URL for MinIO or a test server) [{text.splitlines()[0]}]",
                            unreachable=True)
    return StorageError(f"{url}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}")


class storage_errors:  # noqa: N801 - used as a lowercase context manager
    """Context manager turning pyarrow / OS errors into StorageError naming the URL (and ``endpoint``,
    the S3 endpoint of the filesystem in use, when it is not the environment's)."""

    def __init__(self, url: str, what: str, endpoint: str | None = None):
        self.url, self.what, self.endpoint = url, what, endpoint

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None or isinstance(exc, StorageError):
            return False
        if isinstance(exc, FileNotFoundError) and not is_s3(self.url):
            raise StorageError(f"{self.url}: no such file or directory") from exc
        if isinstance(exc, (OSError, ValueError)):
            low = str(exc).lower()
            if isinstance(exc, FileNotFoundError) or "path does not exist" in low or "nosuchkey" in low:
                raise StorageError(f"{self.url}: not found") from exc
            raise _explain(self.url, exc, self.endpoint) from exc
        return False


def check_access(url: str | os.PathLike, *, writable: bool = False) -> Location:
    """Parse ``url`` and prove it can be listed (and written, with ``writable``); raise StorageError if not."""
    loc = Location.parse(url)
    if loc.is_s3:
        fs = loc.filesystem()
        with storage_errors(loc.url, "check"):
            info = fs.get_file_info(loc.bucket)
            if info.type == pafs.FileType.NotFound:
                raise StorageError(f"{loc.url}: bucket {loc.bucket!r} does not exist "
                                   f"(endpoint {endpoint_url() or 'AWS default'})")
            fs.get_file_info(pafs.FileSelector(loc.fs_path, allow_not_found=True))
    else:
        p = Path(loc.fs_path)
        if writable:
            p.mkdir(parents=True, exist_ok=True)
            if not os.access(p, os.W_OK):
                raise StorageError(f"{loc.url}: directory is not writable")
        elif not p.exists():
            raise StorageError(f"{loc.url}: no such file or directory")
    if writable:
        # a name of its own: two jobs probing one prefix at once must not delete each other's probe
        probe = loc.join(f".bgwsol-write-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        probe.write_bytes(b"ok")
        probe.delete()
    return loc


# ------------------------------------------------------------------------------ webdataset

class _ArrowReadStream:
    """A binary file object over a pyarrow input stream (what webdataset's tar reader wants)."""

    def __init__(self, stream):
        self._s = stream

    def read(self, n: int = -1) -> bytes:
        return self._s.read() if n is None or n < 0 else self._s.read(n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_url(url: str, mode: str = "rb", bufsize: int = 8192, **_kw):
    """webdataset opener for ``s3://`` URLs: a streaming reader through the pyarrow S3 filesystem."""
    if "r" not in mode:
        raise StorageError(f"{url}: only reading is supported through webdataset (mode {mode!r})")
    loc = Location.parse(url)
    with storage_errors(url, "open"):
        return _ArrowReadStream(loc.filesystem().open_input_stream(loc.fs_path))


def register_webdataset_opener() -> None:
    """Let ``webdataset`` open ``s3://`` URLs with :func:`open_url` (idempotent)."""
    import importlib

    importlib.import_module("webdataset.gopen").gopen_schemes["s3"] = open_url


def wait_until_writable(loc: Location, patience_s: float, first_delay_s: float = 1.0, max_delay_s: float = 30.0,
                        sleep=None) -> float:
    """Write and delete a probe object under ``loc`` until it works, retrying with exponential
    backoff (``first_delay_s`` doubling up to ``max_delay_s``) for at most ``patience_s`` seconds.

    Returns the seconds spent retrying (0.0 when the store answered at once). Raises :class:`StorageError`
    naming the URL and the last cause once the patience is spent. Only reachability is retried:
    a missing bucket or refused credentials fail at the first attempt (retrying cannot help).
    """
    from bgwsol.retry import Backoff

    backoff, failed = Backoff(patience_s, first_delay_s, max_delay_s, sleep), False
    while True:
        try:
            check_access(loc.url, writable=True)
            return backoff.elapsed if failed else 0.0
        except StorageError as exc:
            if not exc.unreachable:  # a missing bucket or refused keys: a retry cannot help
                raise
            failed = True
            if not backoff.wait(whole=True):
                raise StorageError(f"{str(exc).splitlines()[0]}; still unreachable after {backoff.elapsed:.0f} s of "
                                   f"retries", unreachable=True) from exc
