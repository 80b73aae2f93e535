"""components.data.sources.download_file / resolve_movielens_dir against a real local HTTP server."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from components.data.sources import download_file, read_movielens, resolve_movielens_dir
from components.errors import ChecksumError, SourceError
from components.ingest import ingest

ZIP_PATH = "/ml-latest-small.zip"


@pytest.fixture
def ml_zip(tiny_movielens) -> bytes:
    """A small MovieLens-layout zip: ml-latest-small/{ratings,movies,tags}.csv."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in ("ratings.csv", "movies.csv", "tags.csv"):
            archive.writestr(f"ml-latest-small/{name}", (tiny_movielens / name).read_bytes())
    return buffer.getvalue()


@pytest.fixture
def http_server():
    """A threaded HTTP server on 127.0.0.1:<free port>; tests register handlers per path.

    ``routes[path] = handler(request)``; unknown paths answer 404. ``hits`` lists every request path.
    """
    routes: dict = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            route = routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            route(self)

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(base=f"http://127.0.0.1:{server.server_address[1]}", routes=routes, hits=hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def serve_bytes(body: bytes, *, claimed_length: int | None = None):
    def handler(request):
        request.send_response(200)
        request.send_header("Content-Type", "application/zip")
        request.send_header("Content-Length", str(len(body) if claimed_length is None else claimed_length))
        request.end_headers()
        request.wfile.write(body)
        request.wfile.flush()
        request.close_connection = True

    return handler


def test_download_success_then_cache_reuse_without_network(http_server, ml_zip, tmp_path):
    http_server.routes[ZIP_PATH] = serve_bytes(ml_zip)
    sha = hashlib.sha256(ml_zip).hexdigest()
    cache = tmp_path / "downloads"
    url = http_server.base + ZIP_PATH

    first = download_file(url, sha, cache, timeout_s=5)
    assert first.read_bytes() == ml_zip
    assert first.name == f"{sha[:16]}-ml-latest-small.zip"
    assert http_server.hits == [ZIP_PATH]

    second = download_file(url, sha, cache, timeout_s=5)
    assert second == first
    assert http_server.hits == [ZIP_PATH]  # served from the cache, no second request
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # no .part- leftovers


def test_corrupted_cache_entry_is_downloaded_again(http_server, ml_zip, tmp_path):
    http_server.routes[ZIP_PATH] = serve_bytes(ml_zip)
    sha = hashlib.sha256(ml_zip).hexdigest()
    cache = tmp_path / "downloads"
    cache.mkdir()
    (cache / f"{sha[:16]}-ml-latest-small.zip").write_bytes(b"garbage")

    path = download_file(http_server.base + ZIP_PATH, sha, cache, timeout_s=5)
    assert path.read_bytes() == ml_zip
    assert len(http_server.hits) == 1


def test_resolve_url_downloads_extracts_and_reuses(http_server, ml_zip, tmp_path):
    http_server.routes[ZIP_PATH] = serve_bytes(ml_zip)
    sha = hashlib.sha256(ml_zip).hexdigest()
    url = http_server.base + ZIP_PATH

    folder, provenance = resolve_movielens_dir(url, tmp_path / "downloads", sha, timeout_s=5)
    assert folder.name == "ml-latest-small"
    assert provenance == {"archive": url, "archive_sha256": sha}
    data = read_movielens(folder)
    assert len(data.items) == 4 and len(data.interactions) == 7

    again, _ = resolve_movielens_dir(url, tmp_path / "downloads", sha, timeout_s=5)
    assert again == folder
    assert http_server.hits == [ZIP_PATH]


def test_ingest_from_url_records_the_archive(http_server, ml_zip, make_settings):
    http_server.routes[ZIP_PATH] = serve_bytes(ml_zip)
    sha = hashlib.sha256(ml_zip).hexdigest()
    url = http_server.base + ZIP_PATH
    settings = make_settings(ingest={"source": url, "download_sha256": sha, "download_timeout_s": 5})

    snapshot = ingest(settings)
    assert snapshot.manifest["sources"]["archive"] == {"uri": url, "sha256": sha}
    assert snapshot.manifest["row_counts"]["interactions"] == 7
    assert (settings.downloads_dir / f"{sha[:16]}-ml-latest-small.zip").exists()


def test_wrong_hash_raises_checksum_error_and_leaves_nothing(http_server, ml_zip, tmp_path):
    http_server.routes[ZIP_PATH] = serve_bytes(ml_zip)
    cache = tmp_path / "downloads"
    wrong = "0" * 64

    with pytest.raises(ChecksumError, match=f"has SHA-256 {hashlib.sha256(ml_zip).hexdigest()}, expected {wrong}"):
        download_file(http_server.base + ZIP_PATH, wrong, cache, timeout_s=5)
    assert list(cache.iterdir()) == []


def test_truncated_body_raises_source_error(http_server, ml_zip, tmp_path):
    http_server.routes[ZIP_PATH] = serve_bytes(ml_zip[:200], claimed_length=len(ml_zip))
    cache = tmp_path / "downloads"

    with pytest.raises(SourceError, match=rf"truncated: received 200 of {len(ml_zip)} bytes") as info:
        download_file(http_server.base + ZIP_PATH, hashlib.sha256(ml_zip).hexdigest(), cache, timeout_s=5)
    assert not isinstance(info.value, ChecksumError)
    assert list(cache.iterdir()) == []


def test_http_404_raises_source_error(http_server, tmp_path):
    cache = tmp_path / "downloads"
    with pytest.raises(SourceError, match=r"HTTP 404") as info:
        download_file(http_server.base + "/missing.zip", "0" * 64, cache, timeout_s=5)
    assert "missing.zip" in str(info.value)
    assert http_server.hits == ["/missing.zip"]
    assert list(cache.iterdir()) == []


def test_unreachable_server_raises_source_error(tmp_path):
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    with pytest.raises(SourceError, match="download of http://127.0.0.1:1/x.zip failed"):
        download_file("http://127.0.0.1:1/x.zip", "0" * 64, tmp_path / "downloads", timeout_s=5)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_truncated_chunked_body_raises_source_error(http_server, tmp_path):
    def chunked_then_close(request):
        request.protocol_version = "HTTP/1.1"
        request.send_response(200)
        request.send_header("Transfer-Encoding", "chunked")
        request.end_headers()
        request.wfile.write(b"100\r\n" + b"x" * 100)  # promises a 256-byte chunk, sends 100, closes
        request.wfile.flush()
        request.close_connection = True

    http_server.routes[ZIP_PATH] = chunked_then_close
    cache = tmp_path / "downloads"
    try:
        with pytest.raises(SourceError):
            download_file(http_server.base + ZIP_PATH, "0" * 64, cache, timeout_s=5)
    finally:
        assert list(cache.iterdir()) == []  # the partial body is cleaned up either way
