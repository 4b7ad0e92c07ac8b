"""Whole secure rounds in memory: dropouts at each phase, refusals, uniformity, DP accounting.

The oracle is the plain (equal-weight) mean of the survivors' clipped deltas; the secure result
must match it within the stated quantization error bound, 1/scale per coordinate.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from scipy import stats

from privacy import dp, quantize
from privacy.messages import SERVER, Type, header
from privacy.secagg import ProtocolError, RoundAborted, SecAggClient, SecAggServer, make_config

PHASES = ("advertise", "share_keys", "masked_input", "unmask")


def sparse_deltas(rng: np.random.Generator, n: int, d: int, zero_share: float = 0.9) -> list[np.ndarray]:
    """Deltas shaped like an embedding update: most rows exactly zero, the rest small."""
    out = []
    for _ in range(n):
        x = rng.normal(0, 0.05, d) * (rng.random(d) > zero_share)
        out.append(x)
    return out


def run_round(config, deltas, drop: dict[str, set[int]] | None = None, clients=None):
    """One round; drop[phase] = clients that vanish before answering that phase.
    Returns (server, aggregate, the masked-input bodies the server received)."""
    drop = {phase: set(drop.get(phase, ())) for phase in PHASES} if drop else {p: set() for p in PHASES}
    server = SecAggServer(config)
    clients = clients or {i: SecAggClient(config, i, np.random.default_rng(100 + i))
                          for i in range(config.cohort_size)}
    alive = set(clients)
    alive -= drop["advertise"]
    for i in sorted(alive):
        server.receive_advertise(clients[i].advertise())
    roster = server.roster()
    alive -= drop["share_keys"]
    for i in sorted(alive):
        server.receive_shares(clients[i].share_keys(roster))
    server.close_shares()
    alive -= drop["masked_input"]
    stored = {}
    for i in sorted(alive):
        stored[i] = clients[i].masked_input(server.shares_for(i), deltas[i])
        server.receive_masked_input(stored[i])
    request = server.unmask_request()
    alive -= drop["unmask"]
    for i in sorted(alive):
        server.receive_unmask(clients[i].unmask(request))
    return server, server.finish(), stored


def oracle(config, deltas, members):
    return np.mean([quantize.clip(deltas[i], config.clip) for i in members], axis=0)


@pytest.mark.parametrize("phase", PHASES)
def test_cohort_of_ten_with_three_dropping_at_each_phase(phase):
    config = make_config(round_id=11, cohort_size=10, num_params=5000, bits=16, clip=1.0)
    deltas = sparse_deltas(np.random.default_rng(0), 10, 5000)
    deltas[4] *= 100  # one client far above the bound: it is clipped, not refused
    dropped = {2, 5, 7}
    server, aggregate, _ = run_round(config, deltas, {phase: dropped})
    # dropping before the masked input removes the input; after it, the input is recovered
    included = set(range(10)) - (dropped if phase != "unmask" else set())
    assert aggregate.survivors == sorted(included) and aggregate.count == len(included)
    assert aggregate.dropped == (sorted(dropped) if phase == "masked_input" else [])
    error = np.abs(aggregate.mean(config) - oracle(config, deltas, included))
    assert error.max() < quantize.error_bound(config.scale)
    # the check can fail: leaving one survivor out of the oracle is far off
    wrong = oracle(config, deltas, sorted(included)[1:])
    assert np.abs(aggregate.mean(config) - wrong).max() > 10 * quantize.error_bound(config.scale)


def test_sparse_graph_round_with_dropouts_at_three_phases():
    n = 40
    config = make_config(round_id=3, cohort_size=n, num_params=2000, bits=20, clip=0.5, degree=10,
                         graph_seed=bytes(range(32)))
    assert config.degree == 10 and config.threshold == 7
    server = SecAggServer(config)
    # spread the dropouts so no client loses more than k - t = 3 neighbours
    drop = {"share_keys": {1, 9}, "masked_input": {3, 17, 30}, "unmask": {4, 22}}
    gone = set().union(*drop.values())
    assert max(len(server.graph[u] & gone) for u in range(n)) <= config.degree - config.threshold
    deltas = sparse_deltas(np.random.default_rng(1), n, 2000)
    server, aggregate, _ = run_round(config, deltas, drop)
    included = sorted(set(range(n)) - {1, 9, 3, 17, 30})
    assert aggregate.survivors == included
    assert np.abs(aggregate.mean(config) - oracle(config, deltas, included)).max() < 1 / config.scale
    assert all(len(server.graph[u]) == 10 for u in range(n))


def test_sparse_graph_round_aborts_when_one_neighbourhood_loses_too_many():
    n = 40
    config = make_config(round_id=3, cohort_size=n, num_params=200, degree=10, graph_seed=bytes(range(32)))
    victim = 0
    lost = sorted(SecAggServer(config).graph[victim])[:4]  # 4 > k - t = 3 of client 0's neighbours
    deltas = sparse_deltas(np.random.default_rng(1), n, 200)
    with pytest.raises(RoundAborted, match="threshold"):
        run_round(config, deltas, {"unmask": set(lost)})


def test_cohort_below_the_minimum_is_refused():
    with pytest.raises(ProtocolError):
        make_config(round_id=1, cohort_size=2, num_params=10)
    with pytest.raises(ProtocolError):
        make_config(round_id=1, cohort_size=10, num_params=10, min_survivors=2)


@pytest.mark.parametrize("phase", PHASES[:3])
def test_server_refuses_to_go_on_below_min_survivors(phase):
    config = make_config(round_id=2, cohort_size=10, num_params=100)  # min_survivors = 7
    deltas = sparse_deltas(np.random.default_rng(2), 10, 100)
    with pytest.raises(RoundAborted):
        run_round(config, deltas, {phase: {0, 1, 2, 3}})


def test_server_refuses_to_finish_with_too_few_unmask_answers():
    config = make_config(round_id=2, cohort_size=10, num_params=100)
    deltas = sparse_deltas(np.random.default_rng(2), 10, 100)
    with pytest.raises(RoundAborted):
        run_round(config, deltas, {"unmask": {0, 1, 2, 3}})


def test_too_few_shares_to_rebuild_a_secret_aborts():
    """min_survivors 3 lets the round reach unmasking, but 5 answers are below threshold 6."""
    config = make_config(round_id=2, cohort_size=10, num_params=100, min_survivors=3)
    deltas = sparse_deltas(np.random.default_rng(2), 10, 100)
    with pytest.raises(RoundAborted, match="threshold"):
        run_round(config, deltas, {"unmask": {0, 1, 2, 3, 4}})


def _cohort_after_shares(config):
    """A full cohort whose shares the server has routed; returns (clients, server)."""
    server = SecAggServer(config)
    clients = [SecAggClient(config, i) for i in range(config.cohort_size)]
    for c in clients:
        server.receive_advertise(c.advertise())
    roster = server.roster()
    for c in clients:
        server.receive_shares(c.share_keys(roster))
    server.close_shares()
    return clients, server


def _client_at_unmask(config, index=0):
    """A full cohort up to the unmask request; returns (clients, server)."""
    clients, server = _cohort_after_shares(config)
    for c in clients:
        server.receive_masked_input(c.masked_input(server.shares_for(c.index), np.zeros(config.num_params)))
    return clients, server


def _request(config, survivors, dropped):
    return (header(Type.UNMASK_REQUEST, config.round_id, SERVER)
            + struct.pack(f"<I{len(survivors)}I", len(survivors), *survivors)
            + struct.pack(f"<I{len(dropped)}I", len(dropped), *dropped))


def test_client_refuses_to_unmask_a_small_or_inconsistent_sum():
    config = make_config(round_id=9, cohort_size=10, num_params=50)
    clients, _ = _client_at_unmask(config)
    # a curious server claims only 0, 1 survived and the rest dropped: 2 < min_survivors
    with pytest.raises(RoundAborted):
        clients[0].unmask(_request(config, [0, 1], list(range(2, 10))))
    with pytest.raises(ProtocolError, match="overlap"):
        clients[1].unmask(_request(config, list(range(10)), [3]))
    with pytest.raises(ProtocolError, match="match"):  # neighbour 9 neither survived nor dropped
        clients[2].unmask(_request(config, list(range(9)), []))
    with pytest.raises(ProtocolError, match="survivor"):
        clients[3].unmask(_request(config, [0, 1, 2, 4, 5, 6, 7, 8], [3, 9]))
    answer = clients[4].unmask(_request(config, list(range(10)), []))  # the honest request
    assert len(answer) == 20 + 4 + 9 * (4 + 2 + 33)
    with pytest.raises(ProtocolError):  # once only: a second request could ask for the other share
        clients[4].unmask(_request(config, list(range(9)), [9]))


def test_server_refuses_misrouted_or_repeated_messages():
    config = make_config(round_id=4, cohort_size=5, num_params=10)
    server = SecAggServer(config)
    clients = [SecAggClient(config, i) for i in range(5)]
    first = clients[0].advertise()
    server.receive_advertise(first)
    with pytest.raises(ProtocolError):
        server.receive_advertise(first)
    for c in clients[1:]:
        server.receive_advertise(c.advertise())
    with pytest.raises(ProtocolError):
        server.receive_masked_input(b"FSA1")  # wrong phase
    roster = server.roster()
    shares = clients[0].share_keys(roster)
    server.receive_shares(shares)
    with pytest.raises(ProtocolError):
        server.receive_shares(shares)
    other = SecAggClient(make_config(round_id=5, cohort_size=5, num_params=10), 1)
    other.advertise()
    with pytest.raises(ProtocolError):
        server.receive_shares(other.share_keys(roster))  # another round's roster is refused by the client


def test_tampered_share_is_detected():
    config = make_config(round_id=6, cohort_size=4, num_params=10)
    clients, server = _cohort_after_shares(config)
    routed = bytearray(server.shares_for(0))
    routed[-1] ^= 1
    with pytest.raises(ProtocolError, match="authenticate"):
        clients[0].masked_input(bytes(routed), np.zeros(10))


# 30 uniformity tests (3 per stored input) on fresh random masks: at 1e-4 each one clean run in
# about 330 would fail; at 1e-6 one in 33,000, and the input in clear still scores below 1e-10.
ALARM_P = 1e-6


def _residue_pvalue(words: np.ndarray, bits: int) -> float:
    """Chi-square p-value of the top byte of b-bit words against uniform."""
    counts = np.bincount((words >> (bits - 8)).astype(np.int64), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def test_stored_masked_inputs_look_uniform_and_hide_zero_rows():
    config = make_config(round_id=21, cohort_size=10, num_params=60_000, bits=16)
    deltas = sparse_deltas(np.random.default_rng(5), 10, 60_000, zero_share=0.95)
    _, aggregate, stored = run_round(config, deltas, {"masked_input": {8}})
    error = aggregate.mean(config) - oracle(config, deltas, aggregate.survivors)
    assert np.abs(error).max() < 1 / config.scale
    for index, body in stored.items():
        words = np.frombuffer(body[28:], dtype="<u2").astype(np.int64)
        assert len(words) == 60_000
        assert _residue_pvalue(words, 16) > ALARM_P
        assert _residue_pvalue(words & 0xFF, 8) > ALARM_P  # low bits too
        zero_rows = deltas[index] == 0
        assert (words == 0).mean() < 10 / 2**16 * 5  # no pattern of exact zeros
        # words where the delta is zero and where it is not: same distribution
        assert stats.ks_2samp(words[zero_rows], words[~zero_rows]).pvalue > ALARM_P
    # the detector can fail: the unmasked quantized input of the same client is flagged
    rng = np.random.default_rng(0)
    plain = quantize.encode(deltas[0], 16, config.clip, config.scale, rng).astype(np.int64)
    assert _residue_pvalue(plain, 16) < 1e-10
    assert (plain == 0).mean() > 0.5


def test_distributed_noise_has_the_promised_size():
    n, d, z, clip = 10, 20_000, 0.5, 1.0
    config = make_config(round_id=8, cohort_size=n, num_params=d, bits=24, clip=clip, noise_multiplier=z)
    bound = quantize.norm_bound(clip, config.scale, d)  # the integer-domain sensitivity is 2 * bound
    assert config.noise_std == pytest.approx(dp.client_noise_std(z, bound, config.min_survivors))
    assert config.noise_std > dp.sum_noise_std(z, clip) * config.scale / np.sqrt(config.min_survivors)
    deltas = sparse_deltas(np.random.default_rng(6), n, d)
    _, aggregate, _ = run_round(config, deltas, {"share_keys": {3}})
    m = aggregate.count
    error_of_sum = (aggregate.mean(config) - oracle(config, deltas, aggregate.survivors)) * m
    expected = 2 * z * bound / config.scale * np.sqrt(m / config.min_survivors)  # >= 2zC since m >= min
    assert error_of_sum.std() == pytest.approx(expected, rel=0.05)
    assert abs(error_of_sum.mean()) < 5 * expected / np.sqrt(d)


def test_a_realistic_secure_round_is_accounted_as_the_gaussian_at_z():
    """At the model's size the per-client sigma is in the hundreds: tau underflows, and a round's noise,
    sized for the sensitivity after rounding, is the Gaussian mechanism at z exactly."""
    for z, bits, n in [(1.0, 16, 13), (0.5, 20, 100)]:
        config = make_config(round_id=1, cohort_size=n, num_params=690_688, bits=bits, noise_multiplier=z)
        assert config.noise_std > 100
        assert dp.distributed_noise_multiplier(config) == pytest.approx(z, rel=1e-12)
    assert dp.distributed_noise_multiplier(make_config(round_id=1, cohort_size=5, num_params=10)) == 0.0
    with pytest.raises(ValueError):
        dp.ddg_epsilon(0.0, 3, 1.0, 10)


def test_epsilon_equals_dp_accounting_figure():
    import dp_accounting
    from dp_accounting import rdp

    rounds, z, m, population, delta = 300, 1.1, 1000, 1_000_000, 1e-6
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    sampled = dp_accounting.SampledWithoutReplacementDpEvent(population, m, dp_accounting.GaussianDpEvent(z))
    accountant.compose(sampled, count=rounds)
    figure = accountant.get_epsilon(delta)
    assert dp.epsilon(rounds, z, m, population, delta) == pytest.approx(figure, rel=1e-9)
    assert 0 < dp.epsilon(rounds // 3, z, m, population, delta) < figure
    assert dp.epsilon(0, z, m, population, delta) == 0.0
    assert dp.epsilon(10, 0.0, m, population, delta) == float("inf")
    with pytest.raises(ValueError):
        dp.epsilon(10, z, m, m - 1, delta)
