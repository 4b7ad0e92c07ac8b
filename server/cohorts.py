"""Server-chosen cohorts: who takes part in a round is drawn by the server, never chosen by a client.

Bonawitz et al., "Towards Federated Learning at Scale" (MLSys 2019), section 2: devices *check
in*; the server accepts a random subset as the round's cohort, over-selecting (130 % of the goal
count there) because some will drop out, and the round ends at the goal count or a reporting
deadline. Here a round opens in the ``selecting`` phase; check-ins gather for at least
``window_s``; once enough *eligible* check-ins are there, the cohort is drawn (``sample``) and
the round moves to ``reporting``, where only members get tickets. A secure cohort ([T1]) takes
the same drawn members through its own phases (advertise keys, share keys, masked input,
unmasking) before it reports.

Eligibility bounds what one network can land: at most ``per_network`` members per IPv4 /24 or
IPv6 /56 (``server.identity.network_of``), however many ids it checked in. Pure functions, no I/O.
"""

from __future__ import annotations

import math
import random
import secrets
from collections import Counter
from dataclasses import dataclass

PHASE_SELECTING = "selecting"
PHASE_REPORTING = "reporting"


@dataclass(frozen=True)
class CohortRules:
    """How a round's cohort is drawn."""

    goal: int  # MIN_CLIENTS: the round closes at this many reports
    over_selection: float = 0.3  # draw goal * (1 + over_selection) members (Bonawitz et al.: 30 %)
    window_s: float = 30.0  # check-ins gather at least this long after the round opens
    per_network: int = 1  # members per /24 or /56 at most
    poll_s: float = 5.0  # how often a waiting client is told to ask again
    min_eligible: int = 0  # DP: draw only from at least this many eligible check-ins (the accountant's N)

    @property
    def target(self) -> int:
        """How many members to draw when enough clients checked in."""
        return math.ceil(self.goal * (1.0 + self.over_selection))


def eligible(networks: dict[str, int], per_network: int) -> int:
    """How many members check-ins from these networks (network -> check-ins) can give at most."""
    return sum(min(count, per_network) for count in networks.values())


def ready(rules: CohortRules, opened_at: float, now: float, networks: dict[str, int]) -> bool:
    """Whether a selecting round can draw its cohort now: the window passed, the goal is reachable and
    the DP accountant's population (``min_eligible``) checked in.
    """
    return (now >= opened_at + rules.window_s
            and eligible(networks, rules.per_network) >= max(rules.goal, rules.min_eligible))


def sample(checkins: list[tuple[str, str]], target: int, per_network: int,
           rng: random.Random | None = None) -> list[str]:
    """Draw up to target client ids uniformly at random, at most per_network from each network.

    A uniformly random order of every check-in, then the first per_network of each network in that
    order: every client of a network is equally likely to be its member, and a network with a
    thousand made-up ids still lands at most per_network.
    :param checkins: (client_id, network) pairs.
    :param rng: a seeded ``random.Random`` in tests; by default the OS's randomness, so nobody can
        predict the draw.
    """
    order = list(checkins)
    (rng or secrets.SystemRandom()).shuffle(order)
    taken: Counter[str] = Counter()
    members: list[str] = []
    for client_id, network in order:
        if len(members) == target:
            break
        if taken[network] < per_network:
            taken[network] += 1
            members.append(client_id)
    return members
