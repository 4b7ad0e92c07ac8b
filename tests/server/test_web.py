"""Static serving: gzip, ETag revalidation and Cache-Control for /, /static/, /ort/ and /api/files/.

Compression happens in background threads only (issue H, item 8): a file is gzip-encoded once
``warm`` has asked for it and waited for the background thread, or after ``web.precompress``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import threading
import time
from urllib.parse import urlsplit

import pytest

from formats import durable
from formats.bundle import MANIFEST, file_entries
from server import web as web_module
from server.app import ISOLATION_HEADERS, create_app
from study.background import serving
from tests.server.conftest import fetch, write_tiny_bundle

GZIP = {"Accept-Encoding": "gzip, deflate, br"}
DIST = "node_modules/onnxruntime-web/dist"
# path -> (file under the stand-in web_client/, Content-Type)
WEB_FILES = {"/": ("index.html", "text/html"),
             "/static/main.js": ("main.js", "text/javascript"),
             "/static/styles.css": ("styles.css", "text/css"),
             "/ort/ort.min.mjs": (f"{DIST}/ort.min.mjs", "text/javascript"),
             "/ort/ort-wasm-simd-threaded.wasm": (f"{DIST}/ort-wasm-simd-threaded.wasm", "application/wasm")}
ESCAPES = ["/static/../server/app.py", "/static/%2e%2e/server/app.py", "/static/..%2fserver%2fapp.py",
           "/static/%2E%2E%2Fserver%2Fapp.py", "/static/sub/../../server/app.py", "/static//etc/passwd",
           "/static/..%5cserver%5capp.py", "/static/%252e%252e/server/app.py", "/static/main.js%00.css",
           "/ort/../../package.json", "/ort/%2e%2e/%2e%2e/package.json", "/ort/../package.json",
           "/ort/../../../../server/app.py", "/ort/..%2f..%2f..%2f..%2fserver%2fapp.py",
           "/static/node_modules/secret.js", "/static/./node_modules/secret.js",
           "/static/%6eode_modules/secret.js", "/static/node_modules%2fsecret.js",
           f"/static/sub/../{DIST}/ort.min.mjs", "/static/.npmrc", "/static/sub/", "/static/missing.js",
           "/ort/missing.wasm"]


@pytest.fixture
def web_dir(tmp_path):
    """A stand-in web_client/ with compressible files, ORT's dist, and things that must stay private."""
    root = tmp_path / "web_client"
    dist = root / DIST
    dist.mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "index.html").write_text("<!doctype html><title>fedurl</title>\n" + "<p>demo page</p>\n" * 100)
    (root / "main.js").write_text("export const x = 1;\n" * 200)
    (root / "styles.css").write_text("body { margin: 0; }\n" * 100)
    (root / "package.json").write_text('{"name": "web_client"}')
    (root / ".npmrc").write_text("//registry.example/:_authToken=secret")
    (root / "node_modules" / "secret.js").write_text("not for /static")
    (root / "node_modules" / "onnxruntime-web" / "package.json").write_text('{"name": "onnxruntime-web"}')
    (dist / "ort.min.mjs").write_text("export default 1;\n" * 300)
    (dist / "ort-wasm-simd-threaded.wasm").write_bytes(b"\0asm\1\0\0\0" + bytes(range(256)) * 64)
    (dist / "random.wasm").write_bytes(os.urandom(4096))
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "app.py").write_text("outside the web client")
    return root


@pytest.fixture
def web_app(config, web_dir):
    """An app serving the stand-in web client."""
    return create_app({**config, "WEB_CLIENT_DIR": str(web_dir)})


@pytest.fixture
def web(web_app):
    """Test client of web_app."""
    return web_app.test_client()


def warm(app, *paths: str, headers=GZIP) -> None:
    """Ask for paths once (gzip is made in the background meanwhile) and wait until it is ready."""
    client = app.test_client()
    for path in paths:
        fetch(client, path, headers=headers)
    assert web_module.gzip_cache(app).wait_idle(30)


@pytest.fixture
def compress_calls(monkeypatch):
    """Count the files web.py compresses."""
    calls = []
    original = web_module._compress

    def counting(path, size, limit):
        """web_module._compress, recorded."""
        calls.append(path.name)
        return original(path, size, limit)

    monkeypatch.setattr(web_module, "_compress", counting)
    return calls


@pytest.mark.parametrize("path", WEB_FILES)
def test_gzip_round_trips_to_the_file(web_app, web, web_dir, path):
    """With Accept-Encoding: gzip the body is gzip of the file, with its own length, type and headers."""
    name, mimetype = WEB_FILES[path]
    warm(web_app, path)
    response = fetch(web, path, headers=GZIP)
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in response.vary
    assert response.mimetype == mimetype
    assert int(response.headers["Content-Length"]) == len(response.data)
    assert gzip.decompress(response.data) == (web_dir / name).read_bytes()
    assert len(response.data) < (web_dir / name).stat().st_size
    for header, value in ISOLATION_HEADERS.items():
        assert response.headers[header] == value


@pytest.mark.parametrize("accept", [None, "identity", "br", "gzip;q=0", "deflate"])
@pytest.mark.parametrize("path", ["/", "/static/main.js", "/ort/ort-wasm-simd-threaded.wasm"])
def test_no_gzip_unless_the_client_accepts_it(web, web_dir, path, accept):
    """Without gzip in Accept-Encoding the file goes out as it is (still Vary, so caches keep both)."""
    response = fetch(web, path, headers={"Accept-Encoding": accept} if accept else {})
    assert response.status_code == 200
    assert "Content-Encoding" not in response.headers
    assert "Accept-Encoding" in response.vary
    assert response.data == (web_dir / WEB_FILES[path][0]).read_bytes()
    assert int(response.headers["Content-Length"]) == len(response.data)


def test_incompressible_files_are_sent_as_they_are(web, web_dir, compress_calls):
    """Random bytes gain nothing from gzip: sent identity, and not compressed again next time."""
    for _ in range(3):
        response = fetch(web, "/ort/random.wasm", headers=GZIP)
        assert "Content-Encoding" not in response.headers
        assert response.data == (web_dir / DIST / "random.wasm").read_bytes()
        assert web_module.gzip_cache(web.application).wait_idle(30)
    assert compress_calls == ["random.wasm"]


def test_compression_off_with_a_zero_cache(config, web_dir, compress_calls):
    """GZIP_CACHE_BYTES = 0 turns compression off."""
    client = create_app({**config, "WEB_CLIENT_DIR": str(web_dir), "GZIP_CACHE_BYTES": 0}).test_client()
    assert "Content-Encoding" not in fetch(client, "/static/main.js", headers=GZIP).headers
    assert compress_calls == []


def test_each_file_is_compressed_once_even_by_concurrent_requests(web_app, compress_calls):
    """Eight simultaneous first requests for the wasm share one compression."""
    barrier = threading.Barrier(8)
    statuses = []

    def get():
        """One client's request, started together with the others."""
        client = web_app.test_client()
        barrier.wait()
        statuses.append(fetch(client, "/ort/ort-wasm-simd-threaded.wasm", headers=GZIP).status_code)

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert web_module.gzip_cache(web_app).wait_idle(30)
    assert statuses == [200] * 8
    assert compress_calls == ["ort-wasm-simd-threaded.wasm"]


def test_a_changed_file_is_compressed_again(web_app, web, web_dir, compress_calls):
    """The cache is keyed by mtime and size: an edited script is served new, with a new ETag."""
    warm(web_app, "/static/main.js")
    first = fetch(web, "/static/main.js", headers=GZIP)
    (web_dir / "main.js").write_text("export const y = 2;\n" * 300)
    assert "Content-Encoding" not in fetch(web, "/static/main.js", headers=GZIP).headers  # new: not ready yet
    warm(web_app, "/static/main.js")
    second = fetch(web, "/static/main.js", headers=GZIP)
    assert gzip.decompress(second.data) == (web_dir / "main.js").read_bytes()
    assert second.headers["ETag"] != first.headers["ETag"]
    assert compress_calls == ["main.js", "main.js"]


def test_cache_drops_the_least_recently_used_body(web_dir, compress_calls):
    """Beyond max_bytes the oldest body goes (and is compressed again when asked for); the newest stays."""
    main, css = web_dir / "main.js", web_dir / "styles.css"
    one_body = len(gzip.compress(main.read_bytes(), mtime=0)) + web_module.ENTRY_OVERHEAD
    cache = web_module.GzipCache(max_bytes=one_body)
    for path in (main, main, css, main):
        stat = path.stat()
        assert gzip.decompress(cache.get(path, stat.st_mtime_ns, stat.st_size)) == path.read_bytes()
    assert compress_calls == ["main.js", "styles.css", "main.js"]


@pytest.mark.parametrize("headers", [{}, GZIP])
@pytest.mark.parametrize("path", WEB_FILES)
def test_if_none_match_gives_304(web_app, web, path, headers):
    """The ETag of either encoding revalidates to a 304 that still carries Vary and isolation headers."""
    warm(web_app, path, headers=headers)
    etag = fetch(web, path, headers=headers).headers["ETag"]
    response = fetch(web, path, headers={**headers, "If-None-Match": etag})
    assert response.status_code == 304 and response.data == b""
    assert response.headers["ETag"] == etag
    assert "Accept-Encoding" in response.vary
    assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_etags_differ_between_encodings(web_app, web):
    """A gzip body and the plain file are different representations: an identity ETag gets no 304 for gzip."""
    warm(web_app, "/static/main.js")
    plain = fetch(web, "/static/main.js").headers["ETag"]
    zipped = fetch(web, "/static/main.js", headers={**GZIP, "If-None-Match": plain})
    assert zipped.status_code == 200 and zipped.headers["ETag"] != plain


@pytest.mark.parametrize("path, cache_control", [
    ("/", {"no-cache"}), ("/static/main.js", {"no-cache"}),
    ("/ort/ort.min.mjs", {"public", "max-age=86400"}),
    ("/ort/ort-wasm-simd-threaded.wasm", {"public", "max-age=86400"})])
def test_cache_control(web, path, cache_control):
    """Page code revalidates on every load; ORT's dist (versioned by the lockfile) is reused for a day."""
    for headers in ({}, GZIP):
        response = fetch(web, path, headers=headers)
        assert {part.strip() for part in response.headers["Cache-Control"].split(",")} == cache_control


@pytest.mark.parametrize("path", ESCAPES)
def test_nothing_outside_the_served_folders(web, path):
    """Traversal (plain, percent-encoded, backslashes, NUL), node_modules and dotfiles are all 404
    (a doubled slash is first redirected to the single-slash path by werkzeug's routing)."""
    for headers in ({}, GZIP):
        assert fetch(web, path, headers=headers, follow_redirects=True).status_code == 404, path


def test_nothing_outside_the_served_folders_over_http(web_app):
    """The same over a real socket, where nothing normalises the request line."""
    statuses = {}
    with serving(web_app) as base_url:
        for path in ESCAPES:
            connection = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=10)
            connection.request("GET", path, headers=GZIP)
            statuses[path] = connection.getresponse().status
            connection.close()
    refused_otherwise = {path: status for path, status in statuses.items() if status != 404}
    assert refused_otherwise == {"/static//etc/passwd": 308}  # werkzeug's redirect to /static/etc/passwd


@pytest.fixture
def compressible_bundle(tmp_path):
    """The tiny bundle with a train_step.onnx that compresses, like a real graph's initializers."""
    bundle = write_tiny_bundle(tmp_path / "bundle")
    (bundle / "train_step.onnx").write_bytes(b"\x08\x07\x12\x06pytorch" + bytes(4096))
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"] = file_entries(bundle)
    durable.write_json(bundle / MANIFEST, manifest)
    return bundle


def test_model_files_gzip_with_their_own_etag(config, compressible_bundle):
    """/api/files/<sha256>: gzip decodes to the hashed bytes, under a distinct ETag, still immutable."""
    app = create_app({**config, "BUNDLE_DIR": str(compressible_bundle)})
    client = app.test_client()
    url = client.get("/api/model").get_json()["files"]["train_step.onnx"]
    sha = url.rsplit("/", 1)[1]
    warm(app, url)
    response = fetch(client, url, headers=GZIP)
    assert response.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in response.vary
    assert hashlib.sha256(gzip.decompress(response.data)).hexdigest() == sha
    assert response.headers["ETag"] == f'"{sha}-gzip"'
    assert {"public", "immutable", "max-age=31536000"} <= set(response.headers["Cache-Control"].split(", "))
    assert fetch(client, url, headers={**GZIP, "If-None-Match": f'"{sha}-gzip"'}).status_code == 304
    assert fetch(client, url).headers["ETag"] == f'"{sha}"'


def test_requests_never_compress(web_app, web, web_dir, monkeypatch):
    """A file not compressed yet goes out as it is, at once, while another thread compresses it;
    the next request gets the gzip body (issue H: 136 MB took 20.8 s inside request threads)."""
    compressing_threads, release = [], threading.Event()
    original = web_module._compress

    def slow_compress(path, size, limit):
        """Level 9 on a big file: slow, and recorded with the thread doing it."""
        compressing_threads.append(threading.current_thread().name)
        release.wait(10)
        return original(path, size, limit)

    monkeypatch.setattr(web_module, "_compress", slow_compress)
    started = time.monotonic()
    first = fetch(web, "/ort/ort-wasm-simd-threaded.wasm", headers=GZIP)
    assert time.monotonic() - started < 5
    assert first.status_code == 200 and "Content-Encoding" not in first.headers
    assert first.data == (web_dir / DIST / "ort-wasm-simd-threaded.wasm").read_bytes()
    release.set()
    assert web_module.gzip_cache(web_app).wait_idle(30)
    assert compressing_threads == ["fedurl-gzip"]
    assert fetch(web, "/ort/ort-wasm-simd-threaded.wasm", headers=GZIP).headers["Content-Encoding"] == "gzip"


def test_precompress_covers_a_first_visit(web_app, web, web_dir, compress_calls, monkeypatch):
    """At start (fedurl-serve), the page's files, ORT's page files and the model's files are compressed
    in the background; node_modules, dotfiles and the rest of ORT's dist wait until asked for."""
    monkeypatch.setattr(web_module, "_lower_priority", lambda: None)  # nice 19 starves on a loaded machine
    thread = web_module.precompress(web_app)
    thread.join(60)
    assert not thread.is_alive()
    assert {"index.html", "main.js", "styles.css", "ort-wasm-simd-threaded.wasm", "weights.safetensors",
            "tokenizer.json"} <= set(compress_calls)
    assert not {"secret.js", ".npmrc", "random.wasm", "ort.min.mjs"} & set(compress_calls)
    assert len(compress_calls) == len(set(compress_calls))
    for path in ("/", "/static/main.js", "/ort/ort-wasm-simd-threaded.wasm"):
        assert fetch(web, path, headers=GZIP).headers["Content-Encoding"] == "gzip", path


def test_precompress_is_off_with_a_zero_cache(config, web_dir):
    """GZIP_CACHE_BYTES = 0: nothing to precompress."""
    app = create_app({**config, "WEB_CLIENT_DIR": str(web_dir), "GZIP_CACHE_BYTES": 0})
    assert web_module.precompress(app) is None
