"""End to end over real HTTP: five clients enroll, check in and are drawn into the cohort, train
train_step.onnx in onnxruntime on their own slices of real URLs, upload their deltas, and the
next global version passes the publish gate and fits their union better.

The server runs its defaults with the limits one machine needs (every client on 127.0.0.1): a
cheap puzzle, no selection window or over-selection, many members per network."""

from __future__ import annotations

import numpy as np

from client.protocol import FederatedClient
from formats.bundle import load_bundle
from runtime.trainer import LocalTrainer
from server.app import create_app
from study.background import serving

CLIENTS, URLS_PER_CLIENT, EPOCHS, CLIENT_LR = 5, 48, 2, 0.5


def test_five_clients_train_locally_and_the_new_version_is_better(bundle_dir, kasztp_urls, tmp_path):
    """FedAvg of five real local trainings lowers the loss on the union of the clients' URLs."""
    # Prepare: disjoint random slices of real URLs, one per client
    app = create_app({"BUNDLE_DIR": str(bundle_dir), "DATA_DIR": str(tmp_path / "data"),
                      "MIN_CLIENTS": CLIENTS, "MIN_CLIENTS_FLOOR": 2, "TICK_INTERVAL_S": 0,
                      "LOG_LEVEL": "WARNING", "POW_DIFFICULTY": 8, "SELECTION_WINDOW_S": 0,
                      "OVER_SELECTION": 0.0, "MAX_MEMBERS_PER_NETWORK": 100,
                      # DP noise at a cohort of 5 swamps the update (docs/PRIVACY.md); test_dp.py runs it
                      "DP_NOISE_MULTIPLIER": 0.0, "AGGREGATION": "plain"})
    order = np.random.default_rng(0).permutation(len(kasztp_urls))[:CLIENTS * URLS_PER_CLIENT]
    slices = [[kasztp_urls[i] for i in order[k::CLIENTS]] for k in range(CLIENTS)]
    with serving(app) as url:
        # Execute: each client downloads the bundle, trains on its slice, uploads new - global
        answers, clients = [], [FederatedClient(url) for _ in slices]
        for client in clients:
            client.enroll()
        assert [client.check_in()["state"] for client in clients][-1] == "selected"
        for k, (client, urls) in enumerate(zip(clients, slices, strict=True)):
            model = client.fetch_model()
            trainer = LocalTrainer(load_bundle(client.save_bundle(tmp_path / f"client{k}")))
            start = client.global_weights()
            result = trainer.train(start, urls, epochs=EPOCHS, lr=CLIENT_LR, seed=k)
            assert result.loss_after < result.loss_before, "local training should fit the local slice"
            delta = {name: result.weights[name] - start[name] for name in start}
            answers.append(client.upload(delta, client.ticket(), result.num_examples, result.loss_before,
                                         result.loss_after))
            assert model["version"] == 1
        fresh = FederatedClient(url)
        new_model = fresh.fetch_model()
        old_weights = load_bundle(bundle_dir).load_weights()
        new_weights = fresh.global_weights()
        status = fresh.status()
    # Assert
    assert [a["updates_in_round"] for a in answers] == list(range(1, CLIENTS + 1))
    assert new_model["version"] == 2 and answers[-1]["version"] == 2
    assert status["rounds"][0]["participants"] == CLIENTS
    assert status["gate"] == "on" and status["rounds"][0]["status"] == "closed"
    union = trainer.rows([u for urls in slices for u in urls])
    before, after = trainer.mean_loss(old_weights, union), trainer.mean_loss(new_weights, union)
    assert after < before, f"union loss went from {before:.4f} to {after:.4f}"
    assert status["rounds"][0]["loss_after"] < status["rounds"][0]["loss_before"]
