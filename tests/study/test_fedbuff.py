"""study/fedbuff.py: the simulated clock of both schedules, and a tiny comparison end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from study.fedbuff import buffered_events, parse_args, run, staleness_of, step_times, sync_rounds
from tests.conftest import REPO, SHARED_URLS

DURATIONS = [5.0, 1.0, 2.0, 9.0, 3.0, 4.0]  # seconds of one training of client i


def test_a_sync_round_lasts_as_long_as_its_slowest_member():
    """Rounds follow each other, each ending at its start plus its slowest member's duration."""
    # Execute
    rounds = list(sync_rounds(6, 3, 9, DURATIONS.__getitem__, np.random.default_rng(0)))
    # Assert
    assert len(rounds) == 3
    for (start, end, members), following in zip(rounds, rounds[1:] + [None], strict=True):
        assert len(set(members)) == 3
        assert end == start + max(DURATIONS[k] for k in members)
        assert following is None or following[0] == end


def test_buffered_clients_start_when_a_slot_frees_and_arrive_in_time_order():
    """Two slots, 6 trainings: arrivals are sorted, each is its start plus its duration, a new
    start follows every arrival while trainings remain, and no user trains twice at once."""
    # Execute
    events = list(buffered_events(6, 2, 6, DURATIONS.__getitem__, np.random.default_rng(1)))
    # Assert
    starts = [e for e in events if e.kind == "start"]
    arrivals = [e for e in events if e.kind == "arrive"]
    assert len(starts) == len(arrivals) == 6
    assert [e.time for e in arrivals] == sorted(e.time for e in arrivals)
    assert [e.time for e in starts[:2]] == [0.0, 0.0]
    assert [e.time for e in starts[2:]] == [e.time for e in arrivals[:4]]
    running: dict[int, float] = {}
    for event in events:
        if event.kind == "start":
            assert event.client not in running and len(running) < 2
            running[event.client] = event.time
        else:
            assert event.time == running.pop(event.client) + DURATIONS[event.client]


def test_buffered_steps_every_k_arrivals_and_counts_the_steps_a_slow_client_missed():
    """One slow client (100 s) and fast ones (1 s), buffers of 2: the server steps at every second
    arrival, and the slow client's delta arrives after every step taken while it trained."""
    # Prepare
    durations = [100.0] + [1.0] * 5
    order = np.random.default_rng(0)
    # Execute
    events = list(buffered_events(6, 3, 9, durations.__getitem__, order))
    staleness = staleness_of(iter(events), 2)
    arrivals = [e for e in events if e.kind == "arrive"]
    # Assert
    assert step_times([e.time for e in arrivals], 2) == [arrivals[i].time for i in (1, 3, 5, 7)]
    slow = [s for s, e in zip(staleness, arrivals, strict=True) if durations[e.client] == 100.0]
    began = events.index(next(e for e in events if e.kind == "start" and e.client == 0))
    ended = events.index(next(e for e in events if e.kind == "arrive" and e.client == 0))
    arrived_before = [sum(e.kind == "arrive" for e in events[:i]) for i in (began, ended)]
    assert slow == [arrived_before[1] // 2 - arrived_before[0] // 2] and slow[0] >= 2
    assert max(staleness) == slow[0]
    assert all(s <= 1 for s, e in zip(staleness, arrivals, strict=True) if durations[e.client] == 1.0)


@pytest.mark.parametrize("flags", [["--updates", "25", "--cohort", "10"], ["--cohort", "200"]])
def test_impossible_runs_are_refused(tmp_path, flags):
    """Unequal work (updates not a multiple of cohort and buffer) and oversized cohorts are errors."""
    with pytest.raises(SystemExit):
        parse_args(["--corpus", "x", "--out", str(tmp_path), *flags])


def test_a_tiny_comparison_writes_both_curves(bundle_dir, tmp_path):
    """6 users, 8 updates each way (rounds of 4, buffers of 2): metrics for both schedules, equal
    updates applied, a staleness per buffered update, the plot."""
    # Prepare
    kasztp = SHARED_URLS / "kasztp.txt"
    corpus = kasztp if kasztp.is_file() else REPO / "pretrained" / "validation.txt"
    # Execute
    summary = run(parse_args(["--corpus", str(corpus), "--bundle", str(bundle_dir), "--out", str(tmp_path),
                              "--clients", "6", "--updates", "8", "--cohort", "4", "--buffer", "2",
                              "--limit", "300", "--eval-urls", "20"]))
    # Assert
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    applied = {schedule: [int(r["updates_applied"]) for r in rows if r["schedule"] == schedule]
               for schedule in ("sync", "buffered")}
    assert applied == {"sync": [0, 4, 8], "buffered": [0, 2, 4, 6, 8]}
    for schedule in ("sync", "buffered"):  # each row scores its own version, not the one before
        losses = [float(r["loss"]) for r in rows if r["schedule"] == schedule]
        assert losses[1] != losses[0]
    with open(tmp_path / "staleness.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 8
    assert (tmp_path / "fedbuff.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["final"]["buffered"]["version"] == 5
    assert summary["final"]["sync"]["version"] == 3
    assert [t["sync_updates"] for t in summary["time_to_loss_s"]] == [0, 4, 8, 8]
