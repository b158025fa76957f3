"""The background crawler against a local HTTP server that misbehaves in every usual way."""

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from bgwsol.data.sources.crawl import CrawlConfig, crawl, read_url_list
from bgwsol.data.sources.records import DatasetFormatError


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _png_rgba() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (20, 20), (10, 200, 30, 128)).save(buf, format="PNG")
    return buf.getvalue()


class Site:
    """Routes of the test server and what each one does."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.in_flight = 0  # concurrent /good/ requests (each takes 50 ms)
        self.max_in_flight = 0
        self.lock = threading.Lock()


def make_handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body=b"", ctype="image/jpeg", length=None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path
            counted = path.startswith("/good/")  # requests the client never abandons
            with site.lock:
                site.hits[path] = site.hits.get(path, 0) + 1
                site.in_flight += counted
                site.max_in_flight = max(site.max_in_flight, site.in_flight)
            try:
                if path.startswith("/good/"):
                    time.sleep(0.05)
                    self._send(200, _jpeg(int(path.split("/")[-1].split(".")[0])))
                elif path == "/dup.jpg":
                    self._send(200, _jpeg(1))
                elif path == "/alpha.png":
                    self._send(200, _png_rgba(), "image/png")
                elif path == "/missing.jpg":
                    self._send(404, b"not found", "text/plain")
                elif path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/good/7.jpg")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/slow.jpg":
                    time.sleep(2.0)
                    self._send(200, _jpeg(3))
                elif path == "/huge-declared.jpg":
                    self._send(200, b"", length=10**9)
                elif path == "/huge-streamed.jpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    chunk = b"\xff" * 65536
                    try:
                        for _ in range(100):
                            self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                elif path == "/garbage.jpg":
                    self._send(200, b"\x00\x01garbage" * 100)
                elif path == "/page.html":
                    self._send(200, b"<html></html>", "text/html")
                elif path == "/flaky.jpg":
                    if site.hits[path] < 2:
                        self._send(503, b"busy", "text/plain")
                    else:
                        self._send(200, _jpeg(9))
                elif path == "/always-500.jpg":
                    self._send(500, b"oops", "text/plain")
                else:
                    self._send(404, b"", "text/plain")
            finally:
                with site.lock:
                    site.in_flight -= counted

    return Handler


@pytest.fixture
def site():
    s = Site()
    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # clients that time out break pipes on purpose
            pass

    server = QuietServer(("127.0.0.1", 0), make_handler(s))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    s.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield s
    server.shutdown()


CFG = CrawlConfig(connect_timeout_s=2, read_timeout_s=0.5, total_timeout_s=5, max_bytes=200_000, retries=3,
                  backoff_s=0.05, per_host=2, workers=8)


def test_crawl_failure_modes(site, tmp_path):
    good = [f"/good/{i}.jpg" for i in range(6)]
    bad = {"/missing.jpg": "HTTP 404", "/slow.jpg": "gave up after 3 attempts (ReadTimeout",
           "/huge-declared.jpg": "too large (1000000000 bytes", "/huge-streamed.jpg": "too large (more than",
           "/garbage.jpg": "not a decodable image", "/page.html": "content-type text/html",
           "/always-500.jpg": "gave up after 3 attempts (HTTP 500)", "/loop": "more than 5 redirects"}
    urls = good + ["/dup.jpg", "/redirect", "/alpha.png", "/flaky.jpg"] + list(bad)
    listing = tmp_path / "urls.csv"
    listing.write_text("url,license\n" + "".join(f"{site.base}{u},CC-BY-{i}\n" for i, u in enumerate(urls)))
    report = crawl(read_url_list(listing), tmp_path / "cache", CFG, show_progress=False)

    by_url = {r["url"].replace(site.base, ""): r["reason"] for r in report.rejects}
    assert set(by_url) == set(bad)
    for url, reason in bad.items():
        assert by_url[url].startswith(reason), (url, by_url[url])
    # /dup.jpg has /good/1.jpg's bytes; /redirect lands on a new image; flaky succeeds on retry
    assert report.duplicates == 1
    sources = [s.source.replace(site.base, "") for s in report.samples]
    assert sources == good + ["/redirect", "/alpha.png", "/flaky.jpg"]
    assert site.hits["/flaky.jpg"] == 2 and site.hits["/missing.jpg"] == 1 and site.hits["/always-500.jpg"] == 3
    assert [s.license for s in report.samples][:2] == ["CC-BY-0", "CC-BY-1"]
    assert 1 <= site.max_in_flight <= CFG.per_host  # 8 threads, but at most 2 at a time on one host
    for s in report.samples:
        with Image.open(s.path) as im:
            im.load()
    assert len({s.path for s in report.samples}) == len(report.samples)

    # a rerun fetches nothing that already succeeded
    before = dict(site.hits)
    again = crawl(read_url_list(listing), tmp_path / "cache", CFG, show_progress=False)
    assert [s.path for s in again.samples] == [s.path for s in report.samples]
    assert all(site.hits[u] == before[u] for u in good)
    assert again.cached == len(good) + 4 and again.fetched == 0
    index = [json.loads(ln) for ln in (tmp_path / "cache" / "index.jsonl").read_text().splitlines()]
    assert len(index) == len(urls)


def test_url_list_errors_name_file_and_line(tmp_path):
    p = tmp_path / "urls.txt"
    p.write_text("# background photos\nhttp://a.example/x.jpg\n\nftp://b.example/y.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"urls.txt:4: 'ftp://b.example/y.jpg' is not an http"):
        read_url_list(p)
    p.write_text("# nothing\n")
    with pytest.raises(DatasetFormatError, match="no URLs"):
        read_url_list(p)
    with pytest.raises(DatasetFormatError, match="not found"):
        read_url_list(tmp_path / "nope.txt")
    p.write_text("http://a.example/x.jpg\nhttps://b.example/y.png\n")
    assert [e.line for e in read_url_list(p)] == [1, 2]
