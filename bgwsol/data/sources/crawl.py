"""Crawl a background set from a URL list into a local cache, politely and defensively.

Input: a text file with one URL per line (``#`` comments allowed) or a CSV with a header
holding ``url`` and optionally ``license``. Each URL is fetched with connect/read timeouts
and a total deadline, bounded retries with exponential backoff (connection errors, timeouts,
HTTP 429 and 5xx only), a per-host concurrency cap, a byte limit (from ``Content-Length`` and
while streaming) and a content-type check; the bytes must decode as an image; identical
images (SHA-256) are kept once. Accepted images land in ``<cache>/images/<sha256>.<ext>``,
and ``<cache>/index.jsonl`` records every URL's outcome, so a rerun fetches only what
failed or is new. Returns background :class:`Sample` objects carrying URL and license.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from bgwsol.config import option
from bgwsol.data.images import RejectedImage, decode_rgb
from bgwsol.data.sources.records import BACKGROUND_LABEL, DatasetFormatError, Sample

log = logging.getLogger(__name__)

_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


@dataclass
class CrawlConfig:
    """Politeness and safety limits of the crawler."""

    connect_timeout_s: float = option(5.0, "seconds to wait for a connection")
    read_timeout_s: float = option(15.0, "seconds to wait for each read from the socket")
    total_timeout_s: float = option(60.0, "seconds one download may take in all (slow servers)")
    max_bytes: int = option(25 * 2**20, "largest accepted download in bytes")
    retries: int = option(3, "attempts per URL (1: no retry) on timeouts, connection errors, HTTP 429 and 5xx")
    backoff_s: float = option(0.5, "first retry delay in seconds, doubled on each retry")
    per_host: int = option(4, "requests in flight per host at most")
    workers: int = option(16, "download threads")
    max_redirects: int = option(5, "redirects followed at most")
    user_agent: str = option("bgwsol-crawler/0.1 (+background images for WSOL research)", "User-Agent header")


@dataclass(frozen=True)
class UrlEntry:
    url: str
    license: str
    line: int


@dataclass
class CrawlReport:
    """Outcome: accepted samples (deduplicated, in list order), rejects, duplicate count."""

    samples: list[Sample] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    duplicates: int = 0
    fetched: int = 0
    cached: int = 0


class FetchError(Exception):
    """A URL that produced no usable image; ``retry`` marks transient failures."""

    def __init__(self, reason: str, retry: bool = False):
        super().__init__(reason)
        self.reason, self.retry = reason, retry


def read_url_list(path: str | Path) -> list[UrlEntry]:
    """Parse a URL list (plain or CSV with ``url`` [, ``license``] header), a local file or an
    ``s3://`` object; errors name file and line."""
    from bgwsol.data.storage import Location

    loc = Location.parse(path)
    if not loc.is_s3 and not Path(loc.fs_path).is_file():
        raise DatasetFormatError(f"{loc.url}: URL list not found")
    text = loc.read_bytes().decode()  # a missing s3 object: StorageError "<url>: not found"
    path = loc.url
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    entries: list[UrlEntry] = []
    if "," in first and "url" in [c.strip().lower() for c in first.split(",")]:
        reader = csv.DictReader(io.StringIO(text))
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        for i, row in enumerate(reader, start=2):
            url = (row.get(cols["url"]) or "").strip()
            lic = (row.get(cols["license"]) or "").strip() if "license" in cols else ""
            if not url and not any((v or "").strip() for v in row.values()):
                continue
            entries.append(_checked(UrlEntry(url, lic, i), path))
    else:
        for i, ln in enumerate(lines, start=1):
            ln = ln.strip()
            if ln and not ln.startswith("#"):
                entries.append(_checked(UrlEntry(ln, "", i), path))
    if not entries:
        raise DatasetFormatError(f"{path}: no URLs")
    return entries


def _checked(e: UrlEntry, path: str) -> UrlEntry:
    p = urlparse(e.url)
    if p.scheme not in ("http", "https") or not p.netloc:
        raise DatasetFormatError(f"{path}:{e.line}: {e.url!r} is not an http(s) URL")
    return e


class _HostLimiter:
    """At most ``n`` requests in flight per host."""

    def __init__(self, n: int):
        self.n, self.lock, self.sems = n, threading.Lock(), {}

    def __call__(self, url: str) -> threading.Semaphore:
        host = urlparse(url).netloc
        with self.lock:
            return self.sems.setdefault(host, threading.Semaphore(self.n))


def fetch(session, url: str, cfg: CrawlConfig, limiter: _HostLimiter) -> bytes:
    """GET ``url`` within the limits of ``cfg``; raises FetchError with the reason."""
    import requests

    from bgwsol.retry import Backoff

    last, backoff = "no attempt", Backoff(first_s=cfg.backoff_s, max_s=float("inf"))
    for attempt in range(cfg.retries):
        if attempt:
            backoff.wait()
        try:
            with limiter(url):
                return _get_once(session, url, cfg)
        except FetchError as exc:
            if not exc.retry:
                raise
            last = exc.reason
        except requests.exceptions.TooManyRedirects:
            raise FetchError(f"more than {cfg.max_redirects} redirects") from None
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
            last = f"{type(exc).__name__}: {str(exc)[:120]}"
        except requests.exceptions.RequestException as exc:
            raise FetchError(f"{type(exc).__name__}: {str(exc)[:120]}") from None
    raise FetchError(f"gave up after {cfg.retries} attempts ({last})")


def _get_once(session, url: str, cfg: CrawlConfig) -> bytes:
    start = time.monotonic()
    with session.get(url, stream=True, timeout=(cfg.connect_timeout_s, cfg.read_timeout_s)) as r:
        if r.status_code == 429 or r.status_code >= 500:
            raise FetchError(f"HTTP {r.status_code}", retry=True)
        if r.status_code != 200:
            raise FetchError(f"HTTP {r.status_code}")
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise FetchError(f"content-type {ctype} is not an image")
        length = r.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > cfg.max_bytes:
            raise FetchError(f"too large ({int(length)} bytes > {cfg.max_bytes})")
        buf = bytearray()
        for chunk in r.iter_content(64 * 1024):
            buf += chunk
            if len(buf) > cfg.max_bytes:
                raise FetchError(f"too large (more than {cfg.max_bytes} bytes)")
            if time.monotonic() - start > cfg.total_timeout_s:
                raise FetchError(f"slower than the {cfg.total_timeout_s:g} s total limit", retry=True)
        return bytes(buf)


def _load_index(path: Path) -> dict[str, dict]:
    index = {}
    if path.is_file():
        for ln in path.read_text().splitlines():
            if ln.strip():
                rec = json.loads(ln)
                index[rec["url"]] = rec
    return index


def crawl(entries: list[UrlEntry], cache_dir: str | Path, cfg: CrawlConfig | None = None,
          show_progress: bool = True) -> CrawlReport:
    """Fetch ``entries`` into ``cache_dir``; returns accepted background samples and the rejects."""
    import requests
    from tqdm.auto import tqdm

    cfg = cfg or CrawlConfig()
    cache = Path(cache_dir)
    (cache / "images").mkdir(parents=True, exist_ok=True)
    index_path = cache / "index.jsonl"
    index = _load_index(index_path)
    limiter = _HostLimiter(cfg.per_host)
    session = requests.Session()
    session.max_redirects = cfg.max_redirects
    session.headers["User-Agent"] = cfg.user_agent
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=cfg.workers)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def work(e: UrlEntry) -> dict:
        old = index.get(e.url)
        if old and old["status"] == "ok" and (cache / old["file"]).is_file():
            return {**old, "license": e.license, "cached": True}
        try:
            data = fetch(session, e.url, cfg, limiter)
            try:
                im, _ = decode_rgb(data)
                fmt = image_format(data)
            except RejectedImage as exc:
                raise FetchError(f"not a decodable image ({exc})") from None
            sha = hashlib.sha256(data).hexdigest()
            name = f"images/{sha}.{_EXT.get(fmt, 'img')}"
            if not (cache / name).is_file():
                tmp = cache / (name + ".part")
                tmp.write_bytes(data)
                tmp.replace(cache / name)
            return {"url": e.url, "status": "ok", "sha256": sha, "file": name, "license": e.license,
                    "size": list(im.size), "cached": False}
        except FetchError as exc:
            return {"url": e.url, "status": "rejected", "reason": exc.reason, "license": e.license, "cached": False}

    with ThreadPoolExecutor(cfg.workers) as pool:
        results = list(tqdm(pool.map(work, entries), total=len(entries), desc="crawl", unit="url",
                            disable=not show_progress))

    report = CrawlReport()
    seen: set[str] = set()
    for e, rec in zip(entries, results):
        if rec["status"] != "ok":
            report.rejects.append({"url": e.url, "line": e.line, "reason": rec["reason"]})
            continue
        report.cached += rec["cached"]
        report.fetched += not rec["cached"]
        if rec["sha256"] in seen:
            report.duplicates += 1
            continue
        seen.add(rec["sha256"])
        report.samples.append(Sample(f"crawl/{rec['sha256'][:24]}", cache / rec["file"], BACKGROUND_LABEL,
                                     size=tuple(rec["size"]), source=e.url, license=rec["license"]))
    tmp = index_path.with_suffix(".jsonl.part")
    tmp.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "cached"}, sort_keys=True) + "\n"
                           for r in results))
    tmp.replace(index_path)
    log.info("crawl: %d URLs -> %d images (%d fetched, %d from cache), %d duplicates, %d rejected",
             len(entries), len(report.samples), report.fetched, report.cached, report.duplicates, len(report.rejects))
    return report


def image_format(data: bytes) -> str:
    """PIL's format name of encoded image bytes (``"JPEG"``, ``"PNG"``...)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.format or ""
