"""Pages: the demo client from web_client/, onnxruntime-web from npm, and the dashboard.

Files go out through ``send_encoded``, which api.py's content-addressed files use as well: gzip
when the client accepts it, compressed once per file version and kept in memory, with an ETag
per encoding so ``If-None-Match`` revalidates to a 304. Compression never runs in a request
thread: ``precompress`` (called by fedurl-serve at start) fills the cache in the background, and a
request for a file not compressed yet gets it as it is while a background thread compresses it.
"""

from __future__ import annotations

import gzip
import mimetypes
import os
import threading
import time
from collections import OrderedDict, deque
from io import BytesIO
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, render_template, request, send_file
from werkzeug.security import safe_join

from server import db, logs
from server.errors import ApiError

bp = Blueprint("web", __name__, static_folder="static", static_url_path="/dashboard/static",
               template_folder="templates")

ORT_DIST = Path("node_modules", "onnxruntime-web", "dist")
ORT_MAX_AGE_S = 86_400  # dist files change only when package-lock.json moves onnxruntime-web
# The dist files the page loads (web_client/worker.js, constants.js): compressed at start; the other
# 130 MB of dist (other builds, source maps) only in the background once someone asks for them.
ORT_PRECOMPRESS = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MIMETYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
             ".json": "application/json", ".map": "application/json", ".html": "text/html",
             ".css": "text/css", ".svg": "image/svg+xml", ".webmanifest": "application/manifest+json"}
# Types worth gzip: text, wasm, ONNX graphs (initializers), weights (~7 %), sentencepiece models,
# counts.bin (3.22 -> 1.7 MB for pretrained/).
COMPRESSIBLE = {*MIMETYPES, ".onnx", ".safetensors", ".model", ".txt", ".bin"}
MIN_SAVING = 0.05  # keep a gzip body only if it is at least this much smaller than the file
ENTRY_OVERHEAD = 256  # bytes charged per cached entry for its key, so "not worth it" marks are bounded too
DASHBOARD_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


class GzipCache:
    """gzip bodies of files, each compressed once per (path, mtime, size), least recently used out first.

    A file whose gzip saves less than MIN_SAVING, or would not fit in max_bytes, is remembered as
    None: it is sent as it is, without compressing it again. Requests use ``cached``, which never
    compresses: a miss is queued for one background thread (started when there is work, gone
    when there is none) at the lowest CPU priority.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[tuple, bytes | None] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._pending: dict[tuple, threading.Lock] = {}  # one lock per file being compressed
        self._queue: deque[tuple[Path, int, int]] = deque()
        self._queued: set[tuple] = set()
        self._worker: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)

    def cached(self, path: Path, mtime_ns: int, size: int) -> bytes | None:
        """The gzip body if ready; else None (send the file as it is) while a background thread makes it."""
        key = (str(path), mtime_ns, size)
        with self._lock:
            if key in self._bodies:
                self._bodies.move_to_end(key)
                return self._bodies[key]
            if key not in self._queued and key not in self._pending:
                self._queued.add(key)
                self._queue.append((path, mtime_ns, size))
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="fedurl-gzip", daemon=True)
                    self._worker.start()
        return None

    def _work(self) -> None:
        """Compress queued files until the queue is empty, then end."""
        _lower_priority()
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    self._idle.notify_all()
                    return
                path, mtime_ns, size = self._queue.popleft()
            try:
                self.get(path, mtime_ns, size)
            except OSError:  # gone or changed since it was asked for: the next request asks again
                pass
            finally:
                with self._lock:
                    self._queued.discard((str(path), mtime_ns, size))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no background compression is queued or running; False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: self._worker is None, timeout)

    def get(self, path: Path, mtime_ns: int, size: int) -> bytes | None:
        """The gzip body of path as of (mtime_ns, size), or None if it is better sent as it is.

        Compresses now if needed: for background threads only, never a request's.
        """
        key = (str(path), mtime_ns, size)
        with self._lock:
            if key in self._bodies:
                self._bodies.move_to_end(key)
                return self._bodies[key]
            pending = self._pending.setdefault(key, threading.Lock())
        with pending:  # concurrent first requests for one file wait for a single compression
            with self._lock:
                if key in self._bodies:
                    return self._bodies[key]
            try:
                body = _compress(path, size, self.max_bytes)
                with self._lock:
                    self._store(key, body)
            finally:
                with self._lock:
                    self._pending.pop(key, None)
        return body

    def _store(self, key: tuple, body: bytes | None) -> None:
        """Add an entry and drop the least recently used ones beyond max_bytes (caller holds the lock)."""
        if key in self._bodies:
            return
        self._bodies[key] = body
        self._size += len(body or b"") + ENTRY_OVERHEAD
        while self._size > self.max_bytes and len(self._bodies) > 1:  # the newest entry always stays
            _, dropped = self._bodies.popitem(last=False)
            self._size -= len(dropped or b"") + ENTRY_OVERHEAD


def _compress(path: Path, size: int, limit: int) -> bytes | None:
    """Gzip of the file, or None if it saves less than MIN_SAVING or the entry would exceed limit."""
    # Level 9: done once per file, it saves ~32 KB per first visit over level 6 for ~1.5 s more CPU.
    # mtime=0: the same file always gives the same bytes, as a strong ETag promises (Range requests).
    body = gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)
    if len(body) > (1 - MIN_SAVING) * size or len(body) + ENTRY_OVERHEAD > limit:
        return None
    return body


def _lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: per-thread nice), so requests come first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: compress at normal priority
        pass


def gzip_cache(app: Flask | None = None) -> GzipCache:
    """The app's gzip cache (default: the current app's), made on first use (GZIP_CACHE_BYTES)."""
    app = app or current_app
    extensions = app.extensions
    if "fedurl.gzip" not in extensions:
        # setdefault is atomic: of two threads here at once, both get the same cache
        extensions.setdefault("fedurl.gzip", GzipCache(app.config["GZIP_CACHE_BYTES"]))
    return extensions["fedurl.gzip"]


def precompress_list(app: Flask, pages: bool = True) -> list[Path]:
    """What a first visit downloads: the web client's files, ORT's page files (unless not pages:
    nginx serves them), the current model's files.
    """
    root = Path(app.config["WEB_CLIENT_DIR"])
    files = []
    for folder, subfolders, names in os.walk(root) if pages else ():
        subfolders[:] = sorted(d for d in subfolders if d.lower() != "node_modules" and not d.startswith("."))
        files += [Path(folder, name) for name in sorted(names) if not name.startswith(".")]
    files += [root / ORT_DIST / name for name in ORT_PRECOMPRESS] if pages else []
    coordinator = app.extensions.get("fedurl.coordinator")
    if coordinator is not None:
        _, _, manifest = coordinator.current()
        with db.transaction(coordinator.engine) as conn:
            for entry in manifest["files"].values():
                found = db.find_file(conn, entry["sha256"])
                if found is not None:
                    files.append(Path(app.config["DATA_DIR"]) / found[0])
    return [f for f in files if f.suffix.lower() in COMPRESSIBLE and f.is_file()]


def precompress(app: Flask, pages: bool = True) -> threading.Thread | None:
    """Compress precompress_list(app, pages) in a background thread at the lowest CPU priority
    (fedurl-serve calls this at start).

    Requests meanwhile get files as they are. None if compression is off (GZIP_CACHE_BYTES = 0).
    """
    if app.config["GZIP_CACHE_BYTES"] <= 0:
        return None
    files = precompress_list(app, pages)

    def run() -> None:
        _lower_priority()
        compress_files(app, files)

    thread = threading.Thread(target=run, name="fedurl-precompress", daemon=True)
    thread.start()
    return thread


def compress_files(app: Flask, files: list[Path]) -> None:
    """Compress each file into the gzip cache now, in this thread, least important last (the cache
    keeps the newest); logs ``precompressed`` when done. A test calls it to wait for what
    ``precompress`` does, without the lowered priority that starves it on a busy machine.
    """
    cache, started, done, sizes = gzip_cache(app), time.monotonic(), 0, [0, 0]
    for path in files:
        try:
            stat = path.stat()
            body = cache.get(path, stat.st_mtime_ns, stat.st_size)
        except OSError:
            continue
        done += 1
        sizes[0] += stat.st_size
        sizes[1] += len(body) if body is not None else stat.st_size
    logs.event("precompressed", files=done, bytes=sizes[0], gzip_bytes=sizes[1],
               seconds=round(time.monotonic() - started, 2))


def send_encoded(path: Path, *, mimetype: str | None = None, etag: str | None = None,
                 max_age: int | None = None) -> Response:
    """Send a file, gzip-encoded when the client accepts gzip and its type compresses.

    :param path: an existing file (the caller has checked where it lies).
    :param mimetype: the Content-Type (default: by suffix).
    :param etag: the identity ETag (default: from mtime and size); the gzip body's gets "-gzip".
    :param max_age: seconds clients may reuse it (public); None: ``no-cache``, revalidate each time.
    """
    stat = path.stat()
    etag = etag or f"{stat.st_mtime_ns:x}-{stat.st_size:x}"
    mimetype = (mimetype or MIMETYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
                or "application/octet-stream")
    body = None
    if (current_app.config["GZIP_CACHE_BYTES"] > 0 and path.suffix.lower() in COMPRESSIBLE
            and request.accept_encodings["gzip"] > 0):
        body = gzip_cache().cached(path, stat.st_mtime_ns, stat.st_size)  # never compresses here
    if body is None:
        response = send_file(path, mimetype=mimetype, etag=etag, max_age=max_age)
    else:
        response = send_file(BytesIO(body), mimetype=mimetype, etag=f"{etag}-gzip", max_age=max_age,
                             last_modified=stat.st_mtime)
        response.content_encoding = "gzip"
    response.vary.add("Accept-Encoding")
    return response


def _file_in(directory: Path, path: str) -> Path:
    """The file at path under directory.

    :raise ApiError: not_found (404, JSON) for anything missing, not a file, outside directory, or
        a name the file system refuses (too long, ...).
    """
    joined = safe_join(str(directory), path)
    try:
        if joined is not None and Path(joined).is_file():
            return Path(joined)
    except (OSError, ValueError):  # ENAMETOOLONG for a 10,000-character path; ValueError: NUL
        pass
    raise ApiError("not_found", f"no file {path[:100]!r} here", 404)


def _web_client() -> Path:
    """The web client's folder (WEB_CLIENT_DIR)."""
    return Path(current_app.config["WEB_CLIENT_DIR"])


@bp.get("/")
def index():
    """The demo page; revalidated on every visit, so a new client version shows at once."""
    return send_encoded(_file_in(_web_client(), "index.html"))


@bp.get("/sw.js")
def service_worker():
    """The offline service worker, served at the root so its scope covers the whole site."""
    return send_encoded(_file_in(_web_client(), "sw.js"))


@bp.get("/favicon.ico")
def favicon():
    """The site icon (an SVG, which browsers accept here) for pages that name none, e.g. the dashboard."""
    return send_encoded(_file_in(_web_client(), "icon.svg"))


@bp.get("/static/<path:path>")
def static_file(path: str):
    """A web client file; neither node_modules (ORT's dist is under /ort/) nor dotfiles."""
    root = _web_client()
    file = _file_in(root, path)
    parts = file.relative_to(root).parts
    if parts[0].lower() == "node_modules" or any(part.startswith(".") for part in parts):
        raise ApiError("not_found", f"no file {path[:100]!r} here", 404)
    return send_encoded(file)


@bp.get("/ort/<path:path>")
def ort(path: str):
    """onnxruntime-web's dist files, installed from npm (never a CDN); cached for a day."""
    return send_encoded(_file_in(_web_client() / ORT_DIST, path), max_age=ORT_MAX_AGE_S)


@bp.get("/dashboard")
def dashboard():
    """Charts of loss, participants and version history, drawn from /api/status."""
    response = current_app.make_response(render_template("dashboard.html"))
    response.headers["Content-Security-Policy"] = DASHBOARD_CSP
    return response
