"""fedurl-simulate's differential privacy: its flags, the server settings they set, the epsilon it reports.

``--noise-multiplier z`` (or ``--epsilon e``, which solves for z) turns on the server's DP: in plain
mode central DP-FedAvg (``server/dp.py``: each delta clipped to ``--clip``, equal weights, Gaussian
noise of std 2zC on the sum), with ``--secure`` distributed noise (each member adds its integer
share before masking). docs/PRIVACY.md explains both.

**Which epsilon.** The simulation itself draws each round's cohort, m = ``--clients-per-round`` of
the N = ``--clients`` users, uniformly without replacement: exactly the sampling event the
accountant assumes (``privacy.dp.epsilon``). So the epsilon reported is the accountant's for the
rounds the server aggregated at (z, m, N, delta). The server cannot see that draw (in plain mode
the simulation runs open selection; in secure mode only the drawn users check in), so its own
ledger, in every manifest and ``/api/status``, assumes N = m, no amplification: a larger, safe
epsilon, reported beside as ``server_epsilon``. The server's budget is therefore lifted
(``DP_EPSILON_BUDGET`` infinite): its N = m ledger would stop training long before the
simulation's epsilon reaches any budget.
"""

from __future__ import annotations

import argparse
import math

from privacy import dp

SOLVE_TOLERANCE = 1e-3  # relative width of z's bracket when --epsilon solves for it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The DP flags (the clip is ``--clip``, shared with --secure)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--noise-multiplier", type=float, default=0.0,
                       help="DP noise multiplier z: Gaussian noise of std 2*z*clip on each round's sum "
                            "(central in plain mode, distributed with --secure; default: 0, no DP)")
    group.add_argument("--epsilon", type=float, default=None,
                       help="target epsilon at --delta after --rounds rounds: solve for the noise multiplier")
    parser.add_argument("--delta", type=float, default=1e-6,
                        help="DP delta at which epsilon is reported and solved (default: %(default)s)")


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse DP flags the accountant cannot honour; with --epsilon, set args.noise_multiplier."""
    if not (math.isfinite(args.noise_multiplier) and args.noise_multiplier >= 0):
        parser.error("--noise-multiplier must be 0 (no DP) or a positive finite number")
    if not 0 < args.delta < 1:
        parser.error("--delta must be within (0, 1)")
    if not (math.isfinite(args.clip) and args.clip > 0):
        parser.error("--clip must be a positive finite L2 norm")
    if args.epsilon is not None:
        if not (math.isfinite(args.epsilon) and args.epsilon > 0):
            parser.error("--epsilon must be a positive finite number")
        args.noise_multiplier = noise_for_epsilon(args.epsilon, args.rounds, args.clients_per_round,
                                                  args.clients, args.delta)


def noise_for_epsilon(target: float, rounds: int, cohort_size: int, population: int, delta: float) -> float:
    """The smallest z (to SOLVE_TOLERANCE, rounded up) whose epsilon after rounds rounds is <= target."""
    def eps(z: float) -> float:
        return dp.epsilon(rounds, z, cohort_size, population, delta)

    low, high = 0.0, 1.0
    while eps(high) > target:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {target} in {rounds} rounds")
    while high - low > SOLVE_TOLERANCE * high:
        middle = (low + high) / 2
        low, high = (low, middle) if eps(middle) <= target else (middle, high)
    return high


def server_settings(args: argparse.Namespace) -> dict:
    """The server's DP settings for this run (none with z = 0: the server's default, DP off)."""
    if args.noise_multiplier <= 0:
        return {}
    return {"DP_NOISE_MULTIPLIER": args.noise_multiplier, "DP_CLIP": args.clip, "DP_DELTA": args.delta,
            "DP_EPSILON_BUDGET": math.inf}


def report(args: argparse.Namespace, status: dict) -> dict:
    """What summary.json says about privacy: the simulation's epsilon, the server's ledger, and how many
    rounds the publish gate let through (noise that swamps the update makes it refuse them).

    ``noise_std_of_mean`` is 2zC / m per weight: what the accountant assumes (secure mode adds a bit
    more: each member's share is sized for the round's minimum survivors).

    :param status: ``/api/status`` at the end of the run (version 1 is the initial bundle).
    """
    server_privacy, z = status["privacy"], args.noise_multiplier
    rounds = server_privacy["rounds"]
    eps = dp.epsilon(rounds, z, args.clients_per_round, args.clients, args.delta) if z > 0 else math.inf
    return {"mode": server_privacy["mode"], "noise_multiplier": z, "clip": args.clip, "delta": args.delta,
            "cohort_size": args.clients_per_round, "population": args.clients, "rounds": rounds,
            "epsilon": eps if math.isfinite(eps) else None, "server_epsilon": server_privacy["epsilon"],
            "server_population": server_privacy["population"], "published_rounds": status["version"] - 1,
            "noise_std_of_mean": dp.sum_noise_std(z, args.clip) / args.clients_per_round}


def describe(privacy: dict) -> str:
    """One line for the printed summary."""
    if privacy["epsilon"] is None:
        return f"privacy: no DP (epsilon infinite); {privacy['published_rounds']} rounds published"
    p = privacy
    return (f"privacy: {p['mode']} DP, z {p['noise_multiplier']:.4g}, clip {p['clip']:g}: epsilon "
            f"{p['epsilon']:.3f} at delta {p['delta']:g} after {p['rounds']} rounds of {p['cohort_size']} "
            f"drawn from {p['population']} (the server's ledger, assuming N = {p['server_population']}: "
            f"{p['server_epsilon']:.3f}); noise std {p['noise_std_of_mean']:.3g} per weight of the mean; "
            f"{p['published_rounds']} rounds published")
