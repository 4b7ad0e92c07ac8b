"""Malicious participants for fedurl-simulate ([T2], docs/SECURITY.md, docs/RESULTS.md).

Two attackers, each the strongest the protocol allows one participant:

- **anti-gradient**: train honestly, then send the opposite of the delta stretched to just under
  the server's hard norm limit (``MAX_UPDATE_NORM``), with a truthful example count. Before [T2]
  one such client of ten raised held-out loss from 5.24 to 20.7 in one round.
- **backdoor** (model replacement, Bagdasaryan et al., AISTATS 2020): train on the client's own
  URLs plus many copies of a phishing URL, so that typing ``payp`` suggests the attacker's host,
  stretch the delta to the norm limit and claim the largest example count allowed. It keeps the
  loss on ordinary URLs low, so held-out loss (and the publish gate) hardly see it; the measure
  is whether the host reaches the top 3 for its prefixes.
"""

from __future__ import annotations

import numpy as np

from runtime.complete import Completer
from runtime.trainer import LocalTrainer, TrainResult
from server.influence import global_norm

ATTACKS = ("anti_gradient", "backdoor")
BACKDOOR_URL = "paypal.com.evil-login.example/verify"
BACKDOOR_HOST = "paypal.com.evil-login.example"
BACKDOOR_PREFIXES = ("payp", "paypa", "paypal", "paypal.")
BACKDOOR_COPIES = 32  # copies of the phishing URL among the attacker's own history
NORM_MARGIN = 0.999  # just under the limit: the server refuses norms above it


def choose_attackers(clients: int, fraction: float, seed: int) -> set[int]:
    """Which simulated users are attackers: round(fraction * clients) of them, fixed by the seed."""
    count = round(fraction * clients)
    return {int(k) for k in np.random.default_rng([seed, 3]).choice(clients, size=count, replace=False)}


def stretched(delta: dict, norm: float) -> dict:
    """The delta scaled to L2 norm ``norm`` (float32)."""
    scale = norm / max(global_norm(delta), 1e-12)
    return {name: (array * scale).astype(np.float32) for name, array in delta.items()}


def attack_update(attack: str, trainer: LocalTrainer, start: dict, history: list[str], epochs: int,
                  lr: float, seed: int, max_norm: float, max_examples: int) -> tuple[dict, TrainResult, int]:
    """(delta, the local training result, the num_examples claimed) of one malicious client."""
    if attack == "anti_gradient":
        result = trainer.train(start, history, epochs=epochs, lr=lr, seed=seed)
        delta = {name: result.weights[name] - start[name] for name in start}
        anti = stretched({n: -a for n, a in delta.items()}, NORM_MARGIN * max_norm)
        return anti, result, result.num_examples
    assert attack == "backdoor", f"unknown attack {attack}"
    result = trainer.train(start, history + [BACKDOOR_URL] * BACKDOOR_COPIES, epochs=max(epochs, 2), lr=lr,
                           seed=seed)
    delta = {name: result.weights[name] - start[name] for name in start}
    return stretched(delta, NORM_MARGIN * max_norm), result, max_examples


def backdoor_hits(completer: Completer, weights: dict) -> int:
    """For how many of the prefixes the attacker's host is among the top 3 suggestions."""
    completer.set_weights(weights)
    return sum(any(s.startswith(BACKDOOR_HOST) for s in completer.complete(prefix, 3))
               for prefix in BACKDOOR_PREFIXES)
