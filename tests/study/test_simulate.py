"""fedurl-simulate end to end through the real server over HTTP, with fixed seeds.

Corpus: real DMOZ URLs when ../shared/data is there, else the shipped model's 200 public
validation URLs (pretrained/validation.txt, with paths), so these run everywhere. Not the
top-sites domains: the test bundle trained on all of them, so none is held out.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import sqlalchemy as sa

from server import schema
from study.simulate import parse_args, run
from tests.conftest import REPO, SHARED_URLS


@pytest.fixture(scope="module")
def corpus():
    """A URL file for the simulations."""
    kasztp = SHARED_URLS / "kasztp.txt"
    return kasztp if kasztp.is_file() else REPO / "pretrained" / "validation.txt"


def simulate(bundle_dir, corpus, out, *flags: str) -> dict:
    """Run fedurl-simulate with the cheap evaluations and the given flags."""
    return run(parse_args(["--corpus", str(corpus), "--bundle", str(bundle_dir), "--out", str(out),
                           "--ksr-urls", "10", "--personal-clients", "1", "--eval-urls", "60", *flags]))


def test_small_federation_lowers_held_out_loss(bundle_dir, corpus, tmp_path):
    """8 non-IID clients, 3 rounds of 4: the held-out loss ends below the initial model's."""
    # Execute
    summary = simulate(bundle_dir, corpus, tmp_path, "--clients", "8", "--rounds", "3", "--clients-per-round",
                       "4", "--limit", "400", "--local-epochs", "2", "--client-lr", "0.3", "--seed", "0")
    # Assert: every round aggregated 4 real updates and metrics.csv has the curve
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["clients"]) for r in rows] == [0, 4, 4, 4]
    quarter = summary["training"]["model_float32_bytes"] / 4  # Q8 (the default): a byte and 1/16 a value
    assert all(4 * quarter < int(r["upload_bytes"]) < 4 * 1.1 * quarter for r in rows[1:])
    losses = [float(r["fed_loss"]) for r in rows]
    assert losses[-1] < losses[0], f"held-out loss per round: {losses}"
    assert float(rows[-1]["central_loss"]) < float(rows[0]["central_loss"])
    # same steps; clients' last batches are partly padding, so centralized sees a few more examples
    assert summary["training"]["examples"] <= summary["training"]["central_examples"]
    assert {p.name for p in tmp_path.glob("*.png")} == {"accuracy.png", "loss.png", "clients.png",
                                                          "upload.png"}
    assert set(summary["held_out"]) == {"initial", "federated", "centralized", "trie"}
    assert summary["personalization"]["clients"] == 1


def test_one_client_one_round_equals_centralized(bundle_dir, corpus, tmp_path):
    """Plain SGD, one client, one round, server FedAvg with lr 1, float32 uploads (Q8's rounding
    would add its noise): the same weights as centralized."""
    # Execute
    result = simulate(bundle_dir, corpus, tmp_path, "--clients", "1", "--rounds", "1",
                      "--clients-per-round", "1", "--limit", "60", "--later-fraction", "0",
                      "--server-optimizer", "fedavg", "--server-lr", "1", "--personal-clients", "0",
                      "--ksr-urls", "0", "--upload-dtype", "float32")
    # Assert: training moved the weights, and both paths moved them identically
    weights = result["weights"]
    assert result["training"]["steps"] >= 3
    moved = max(float(np.abs(weights["federated"][name] - start).max())
                for name, start in weights["initial"].items())
    assert moved > 1e-3
    for name, central in weights["centralized"].items():
        np.testing.assert_allclose(weights["federated"][name], central, rtol=0, atol=1e-5, err_msg=name)


def test_secure_federation_completes_its_rounds_and_keeps_the_server_state(bundle_dir, corpus, tmp_path):
    """--secure: 3 rounds of a cohort of 4 run the secure phases; every round publishes a version, the
    server's database (kept with --data-dir) records three secure closes and no update, and each
    member's masked upload is half its float32 model."""
    data_dir = tmp_path / "server"
    summary = simulate(bundle_dir, corpus, tmp_path / "out", "--clients", "8", "--rounds", "3", "--secure",
                       "--cohort-size", "4", "--limit", "400", "--local-epochs", "2", "--client-lr", "0.3",
                       "--gate", "off", "--data-dir", str(data_dir), "--personal-clients", "0")
    with open(tmp_path / "out" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["clients"]) for r in rows] == [0, 4, 4, 4]
    model_bytes = summary["training"]["model_float32_bytes"]
    assert all(4 * model_bytes / 2 < int(r["upload_bytes"]) < 4 * model_bytes * 0.55 for r in rows[1:])
    assert float(rows[-1]["fed_loss"]) < float(rows[0]["fed_loss"])
    engine = sa.create_engine(f"sqlite:///{data_dir / 'fedurl.sqlite3'}")
    with engine.connect() as conn:
        def count(table, *where) -> int:
            return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()

        versions, plain = count(schema.versions), count(schema.updates)
        secure = count(schema.rounds, schema.rounds.c.close_reason == "secure")
        kept = count(schema.secure_messages)  # an ended round's messages are deleted
    engine.dispose()
    assert (versions, secure, plain, kept) == (4, 3, 0, 0)


@pytest.mark.parametrize("flags, message", [
    (["--clients-per-round", "9"], "cannot exceed"),
    (["--alpha", "0"], "--alpha > 0"),
    (["--rounds", "0"], "--rounds must be"),
    (["--unknown-flag", "1"], "unrecognized arguments"),
    (["--secure", "--cohort-size", "2"], "--secure needs"),
])
def test_bad_options_are_errors(bundle_dir, corpus, tmp_path, capsys, flags, message):
    """Impossible or unknown options stop with a usage error before any work."""
    with pytest.raises(SystemExit):
        parse_args(["--corpus", str(corpus), "--bundle", str(bundle_dir), "--out", str(tmp_path),
                    "--clients", "8", "--clients-per-round", "4", *flags])
    assert message in capsys.readouterr().err
