"""Distribution and pages: /api/model, content-addressed files, tickets, web client, ORT, dashboard."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from client.protocol import FederatedClient
from formats.bundle import load_bundle
from server.app import ISOLATION_HEADERS, create_app
from tests.server.conftest import fetch, small_delta

pytestmark = pytest.mark.databases("sqlite", "postgresql")


@pytest.fixture
def web_dir(tmp_path):
    """A stand-in web_client/ with a page, a script, ORT's dist and another npm package."""
    root = tmp_path / "web_client"
    dist = root / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>fedurl demo</title>")
    (root / "main.js").write_text("export const x = 1;")
    (root / "node_modules" / "secret.js").write_text("not for /static")
    (dist / "ort.min.mjs").write_text("export default 1;")
    (dist / "ort-wasm-simd-threaded.wasm").write_bytes(b"\0asm\1\0\0\0")
    return root


@pytest.fixture
def web(config, web_dir):
    """Test client of an app serving the stand-in web client."""
    return create_app({**config, "WEB_CLIENT_DIR": str(web_dir)}).test_client()


def close_round(client, values=(0.1, 0.2, 0.3)) -> None:
    """Three clients with 10 examples each upload constant deltas of the given values."""
    for value in values:
        fed = FederatedClient(client)
        fed.upload(small_delta(value), fed.ticket(), 10, 5.0, 4.0)


@pytest.mark.parametrize("path", ["/", "/static/main.js", "/ort/ort.min.mjs", "/api/model", "/api/status",
                                  "/dashboard", "/dashboard/static/dashboard.js", "/api/nothing-here",
                                  "/static/missing.js"])
def test_every_response_is_cross_origin_isolated(web, path):
    """COOP/COEP/CORP on pages, API answers and errors alike (multi-threaded WASM needs them)."""
    response = fetch(web, path)
    for header, value in ISOLATION_HEADERS.items():
        assert response.headers[header] == value, (path, header)


def test_model_document_names_version_round_and_file_urls(fed, tiny_bundle):
    """/api/model carries the manifest and one content-addressed URL per bundle file."""
    model = fed.fetch_model()
    assert (model["version"], model["round"]) == (1, 1)
    assert model["manifest"]["files"] == load_bundle(tiny_bundle).manifest["files"]
    for name, entry in model["manifest"]["files"].items():
        assert model["files"][name] == f"/api/files/{entry['sha256']}"


def test_model_etag_revalidates_until_the_round_changes(client):
    """Same version and round: 304; after a round closes: 200 with a new ETag."""
    first = client.get("/api/model")
    etag = first.headers["ETag"]
    assert "no-cache" in first.headers["Cache-Control"]
    assert client.get("/api/model", headers={"If-None-Match": etag}).status_code == 304
    close_round(client)
    second = client.get("/api/model", headers={"If-None-Match": etag})
    assert second.status_code == 200 and second.headers["ETag"] != etag
    assert second.get_json()["version"] == 2


def test_files_are_immutable_and_content_addressed(client, fed):
    """Each file's bytes hash to its URL; it is cacheable forever and revalidates by ETag."""
    for name, url in fed.fetch_model()["files"].items():
        response = fetch(client, url)
        sha = url.rsplit("/", 1)[1]
        assert response.status_code == 200
        assert hashlib.sha256(response.data).hexdigest() == sha, name
        assert response.headers["ETag"] == f'"{sha}"'
        cache = response.headers["Cache-Control"]
        assert "immutable" in cache and "max-age=31536000" in cache and "public" in cache
        assert fetch(client, url, headers={"If-None-Match": f'"{sha}"'}).status_code == 304


def test_new_version_shares_graphs_and_changes_only_weights(client, fed):
    """Graphs keep their URL across versions (fetched once); only the weights URL changes."""
    before = dict(fed.fetch_model()["files"])
    close_round(client)
    after = fed.fetch_model()["files"]
    assert {n for n in before if before[n] != after[n]} == {"weights.safetensors"}


def test_new_version_is_a_complete_bundle_with_fedavg_weights(app, client, fed):
    """Version 2 verifies as a bundle, names its parent, and holds old weights + mean delta."""
    old = fed.global_weights()
    close_round(client)  # equal examples: mean of 0.1, 0.2, 0.3 is 0.2
    bundle = load_bundle(Path(app.config["DATA_DIR"]) / "versions" / "2")  # checks every sha256
    assert (bundle.manifest["model_version"], bundle.manifest["parent_version"]) == (2, 1)
    assert bundle.manifest["aggregation"]["participants"] == 3
    assert fed.fetch_model()["version"] == 2
    new = fed.global_weights()
    for name in old:
        np.testing.assert_allclose(new[name], old[name] + 0.2, rtol=1e-6)


def test_ticket_names_version_round_and_expiry(fed):
    """A ticket comes with the version it is for and an ISO 8601 expiry in the future."""
    ticket = fed.ticket()
    assert (ticket["version"], ticket["round"]) == (1, 1)
    assert len(ticket["ticket"]) >= 32
    assert datetime.fromisoformat(ticket["expires_at"].replace("Z", "+00:00")) > datetime.now().astimezone()


@pytest.mark.parametrize("path, mimetype", [("/ort/ort.min.mjs", "text/javascript"),
                                            ("/ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
                                            ("/static/main.js", "text/javascript"), ("/", "text/html")])
def test_web_files_have_module_and_wasm_mimetypes(web, path, mimetype):
    """Browsers refuse ES modules and streaming WASM compiled from the wrong MIME type."""
    response = fetch(web, path)
    assert response.status_code == 200
    assert response.mimetype == mimetype


@pytest.mark.parametrize("path", ["/static/node_modules/secret.js", "/static/./node_modules/secret.js",
                                  "/static/../web_client/index.html", "/ort/../../secret.js"])
def test_static_serves_neither_node_modules_nor_outside_files(web, path):
    """Only ORT's dist leaves node_modules, and only through /ort/; nothing escapes the folder."""
    assert fetch(web, path).status_code == 404


def test_dashboard_page_and_script(web):
    """The dashboard is a same-origin page whose chart script comes from server/static."""
    page = web.get("/dashboard")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert b"/dashboard/static/dashboard.js" in page.data
    script = fetch(web, "/dashboard/static/dashboard.js")
    assert script.status_code == 200 and b"/api/status" in script.data


def test_status_reports_rounds_losses_and_refusals(client):
    """/api/status: per-round participants and example-weighted losses, refusals by code."""
    close_round(client)
    fed = FederatedClient(client)
    fed.upload(small_delta(), fed.ticket(), 30, 6.0, 3.0)
    client.post("/api/updates", data=b"", content_type="application/octet-stream")
    status = fed.status()
    closed, open_ = status["rounds"]
    assert (closed["status"], closed["participants"], closed["examples"]) == ("closed", 3, 30)
    assert (closed["loss_before"], closed["loss_after"]) == pytest.approx((5.0, 4.0))
    assert (open_["participants"], open_["loss_after"]) == (1, 3.0)
    assert open_["rejected"] == {"malformed_payload": 1}
    assert status["accepted"] == 4 and status["rejected"] == {"malformed_payload": 1}
    assert status["round"]["updates"] == 1 and [v["version"] for v in status["versions"]] == [1, 2]
