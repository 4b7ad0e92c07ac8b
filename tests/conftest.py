"""Fixtures shared by every test folder: the real URL data (when present) and one real bundle."""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_URLS = REPO.parent / "shared" / "data" / "urls"
TEST_BUNDLE_STEPS = 200
# Files whose change alters the exported bundle (the cache key); completer/eval edits reuse it.
BUNDLE_SOURCES = ("model/lm.py", "model/graphs.py", "model/export.py", "model/counts.py", "runtime/ngram.py",
                  "runtime/tokenizer.py", "runtime/trainer.py", "formats/urls.py", "formats/bundle.py",
                  "formats/tensors.py", "formats/counts.py")


def shared_url_file(name: str) -> Path:
    """A file of ../shared/data/urls, or skip the test where that folder is absent (outside CI)."""
    path = SHARED_URLS / name
    if not path.is_file():
        pytest.skip(f"real URL data not available: {path}")
    return path


@pytest.fixture(scope="session")
def kasztp_urls() -> list[str]:
    """Canonical URLs of kasztp.txt (DMOZ-style directory links, ~48k)."""
    from formats.urls import read_corpus

    return read_corpus(shared_url_file("kasztp.txt"))


def _test_corpus() -> tuple[list[str], str]:
    """top-sites domains, plus every 40th kasztp URL when the shared data is there (for paths)."""
    from formats.urls import DEFAULT_CORPUS, load_urls, read_corpus

    urls = load_urls(DEFAULT_CORPUS, None)
    kasztp = SHARED_URLS / "kasztp.txt"
    if kasztp.is_file():
        return urls + read_corpus(kasztp)[::40], "top-sites+kasztp/40"
    return urls, "top-sites"


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    """A small real bundle, exported once and cached under build/ until model/ code changes."""
    from model.export import export_bundle
    from model.lm import LMConfig

    urls, name = _test_corpus()
    source = b"".join((REPO / name).read_bytes() for name in BUNDLE_SOURCES)
    key = hashlib.sha256(source + name.encode()).hexdigest()[:12]
    path = REPO / "build" / f"test-bundle-{key}"
    path.parent.mkdir(exist_ok=True)
    with open(path.parent / "test-bundle.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions export once, not twice
        if not (path / "manifest.json").is_file():
            export_bundle(urls, path, LMConfig(), steps=TEST_BUNDLE_STEPS, lr=3e-3, batch_size=32,
                          seed=0, corpus_name=name)
    return path


@pytest.fixture(scope="session")
def postgresql_cluster():
    """A throwaway PostgreSQL server for the session (tests/postgres.py). Missing binaries fail the
    run in CI (`make test` installs them) and skip the test elsewhere."""
    import os

    from tests.postgres import Cluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL binaries not found (make postgresql installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = Cluster(bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgresql_url(postgresql_cluster):
    """URL of a new, empty PostgreSQL database, dropped after the test."""
    name, url = postgresql_cluster.database()
    yield url
    postgresql_cluster.drop(name)
