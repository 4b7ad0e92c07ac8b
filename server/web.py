"""Pages: the demo client from web_client/, onnxruntime-web from npm, and the dashboard."""

from __future__ import annotations

import posixpath
from pathlib import Path

from flask import Blueprint, abort, current_app, render_template, send_from_directory

bp = Blueprint("web", __name__, static_folder="static", static_url_path="/dashboard/static",
               template_folder="templates")

ORT_DIST = Path("node_modules", "onnxruntime-web", "dist")
MIMETYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
             ".json": "application/json", ".html": "text/html", ".css": "text/css"}
DASHBOARD_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


def _send(directory: Path, path: str):
    """A file under directory (safe_join refuses escapes) with a MIME type browsers accept for ESM/WASM."""
    mimetype = MIMETYPES.get(posixpath.splitext(path)[1].lower())
    return send_from_directory(directory, path, mimetype=mimetype)


@bp.get("/")
def index():
    """The demo page."""
    return _send(Path(current_app.config["WEB_CLIENT_DIR"]), "index.html")


@bp.get("/static/<path:path>")
def static_file(path: str):
    """A web client file; node_modules is not served here (only ORT's dist, under /ort/)."""
    if posixpath.normpath(path).split("/")[0] == "node_modules":
        abort(404)
    return _send(Path(current_app.config["WEB_CLIENT_DIR"]), path)


@bp.get("/ort/<path:path>")
def ort(path: str):
    """onnxruntime-web's dist files, installed from npm (never a CDN)."""
    return _send(Path(current_app.config["WEB_CLIENT_DIR"]) / ORT_DIST, path)


@bp.get("/dashboard")
def dashboard():
    """Charts of loss, participants and version history, drawn from /api/status."""
    response = current_app.make_response(render_template("dashboard.html"))
    response.headers["Content-Security-Policy"] = DASHBOARD_CSP
    return response
