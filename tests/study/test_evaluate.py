"""KSR, the frequency-trie baseline and the threshold sweep on examples small enough to count by hand."""

import functools
import json
import math
import shutil

import pytest

from formats.bundle import load_bundle, min_probability
from runtime.complete import Completer, shown
from study.evaluate import (
    FrequencyTrie,
    keystroke_savings,
    keystrokes,
    main,
    next_token_metrics,
    pick_threshold,
    threshold_sweep,
    typed_sample,
)
from tests.conftest import REPO


def test_keystrokes_without_suggestions_is_one_per_character():
    assert keystrokes("abc.de", lambda typed: []) == 6


def test_keystrokes_accepts_the_longest_matching_suggestion():
    # "" -> no match (type 'g'); "g" -> accept "github.com" over "git" (1 key); done: 2 keys.
    suggestions = {"": ["gmail.com"], "g": ["git", "github.com", "gitlab.com"]}
    assert keystrokes("github.com", lambda typed: suggestions.get(typed, [])) == 2


def test_keystrokes_ignores_suggestions_beyond_k_and_non_prefixes():
    # top-1 only: "g" -> "gitlab.com" is not a prefix of the target, so every char is typed but one:
    # "" type g; "g" no; "gi" -> "github.com" is 1st: accept. 3 keys.
    suggestions = {"g": ["gitlab.com", "github.com"], "gi": ["github.com"]}
    assert keystrokes("github.com", lambda typed: suggestions.get(typed, []), k=1) == 3


def test_keystroke_savings_over_several_targets():
    # "ab": 2 keys; "abcd": "" -> type a; "a" -> accept "abcd": 2 keys. KSR = 1 - 4/6.
    ksr = keystroke_savings(["ab", "abcd"], lambda typed: ["abcd"] if typed == "a" else [])
    assert ksr == pytest.approx(1 - 4 / 6)


def test_trie_ranks_by_frequency_then_alphabet():
    trie = FrequencyTrie(["b.org", "a.org/x", "a.org/x", "a.org/y", "a.net", "c.org"])
    assert trie.complete("a", 3) == ["a.org/x", "a.net", "a.org/y"]
    assert trie.complete("a.org/", 5) == ["a.org/x", "a.org/y"]
    assert trie.complete("z", 5) == []


def test_trie_ksr_by_hand():
    # Train: "a.org/x" twice, "a.org/y" once. Target "a.org/y": "" -> top-3 ["a.org/x","a.org/y"],
    # "a.org/y" matches: 1 key. Target "b.com": no suggestion ever matches: 5 keys. KSR = 1 - 6/12.
    trie = FrequencyTrie(["a.org/x", "a.org/x", "a.org/y"])
    assert keystroke_savings(["a.org/y", "b.com"], lambda p: trie.complete(p, 3)) == pytest.approx(0.5)


def test_next_token_metrics_are_probabilities(bundle_dir):
    bundle = load_bundle(bundle_dir)
    metrics = next_token_metrics(bundle, bundle.load_weights(), ["google.com", "github.com/login"])
    assert 0.0 <= metrics["top1"] <= metrics["top3"] <= 1.0
    assert metrics["perplexity"] >= 1.0
    assert metrics["tokens"] > 4


def test_typed_sample_draws_across_a_list_in_host_order():
    urls = [f"host{h}.com/page{i}" for h in range(10) for i in range(30)]  # sorted by host, as ISCX's
    assert typed_sample(urls, 30, None) == urls[:30], "no seed: the first ones, as before"
    drawn = typed_sample(urls, 30, 0)
    assert len(set(drawn)) == 30 and set(drawn) <= set(urls)
    assert len({url.split("/")[0] for url in drawn}) >= 5, "a seeded draw reaches beyond the first host"
    assert drawn == typed_sample(urls, 30, 0) != typed_sample(urls, 30, 1)
    assert sorted(typed_sample(urls, 1000, 0)) == sorted(urls), "a limit above the list takes all of it"


def test_eval_types_the_sampled_urls(bundle_dir, tmp_path, capsys):
    """fedurl-eval --sample: the keystrokes are simulated on the draw, and the report says so."""
    urls = tmp_path / "held_out.txt"
    urls.write_text("".join(f"aaa{i}.com\n" for i in range(20)) + "zzz-wiki.org/wiki/Python\n")
    reports = {}
    for argv in ([], ["--sample", "3"]):
        main(["--bundle", str(bundle_dir), "--urls", str(urls), "--ksr-limit", "20", "--json", *argv])
        reports[tuple(argv)] = json.loads(capsys.readouterr().out)
    first, drawn = reports[()], reports[("--sample", "3")]
    assert first["ksr_sample"] is None and drawn["ksr_sample"] == 3
    assert first["ksr_urls"] == drawn["ksr_urls"] == 20
    assert first["model"]["perplexity"] == pytest.approx(drawn["model"]["perplexity"]), "all URLs scored"
    assert first["model"]["ksr@3"] != drawn["model"]["ksr@3"], "the draw reached the long URL"


class FixedRanks:
    """A completer stand-in: before typing, "ab.com" at p 0.5 and "xy.com" at 0.01; then nothing."""

    threshold = 0.0

    def complete_scored(self, typed, k):
        ranked = [("ab.com", math.log(0.5)), ("xy.com", math.log(0.01))][:k] if typed == "" else []
        return shown(ranked, 0.0, self.threshold)


def test_threshold_sweep_by_hand():
    # tau 0: both shown before the first key, "ab.com" accepted: 1 key of 6, 1 of 2 shown a prefix.
    # tau 0.1: only "ab.com" shown, still 1 key. tau 0.6: nothing shown, 6 keys, no shown suggestion.
    rows = threshold_sweep(FixedRanks(), ["ab.com"], [0.0, 0.1, 0.6])
    assert [r["ksr@3"] for r in rows] == pytest.approx([5 / 6, 5 / 6, 0.0])
    assert [r["shown_per_key"] for r in rows] == pytest.approx([2.0, 1.0, 0.0])
    assert [r["prefix_share"] for r in rows] == pytest.approx([0.5, 1.0, 0.0])
    assert pick_threshold(rows, 0.02) == 0.1


def test_threshold_sweep_measures_what_a_completer_with_that_tau_shows(bundle_dir):
    """The sweep searches with each tau, so it counts the lists the page shows. Filtering one tau-0
    list instead missed the search's below-tau beam rule (with the test bundle on these URLs, 0.160
    where a completer with tau 0.05 saves 0.157 of the keys).
    """
    urls = (REPO / "pretrained" / "validation.txt").read_text().split()[:40]
    completer = Completer(bundle_dir, threshold=0.0)
    for tau in (0.05, 0.1):
        row, = threshold_sweep(completer, urls, [tau])
        with_tau = Completer(bundle_dir, threshold=tau)
        assert row["ksr@3"] == keystroke_savings(urls, functools.partial(with_tau.complete, k=3), 3)
    assert completer.threshold == 0.0, "the sweep leaves the completer's own threshold as it was"


def test_pick_threshold_keeps_the_allowed_share_of_tau_0s_ksr():
    rows = [{"tau": 0.0, "ksr@3": 0.20}, {"tau": 0.01, "ksr@3": 0.195}, {"tau": 0.02, "ksr@3": 0.18}]
    assert pick_threshold(rows, 0.05) == 0.01
    assert pick_threshold(rows, 0.0) == 0.0
    assert pick_threshold(rows, 0.5) == 0.02


def test_calibrate_writes_tau_into_the_bundle(bundle_dir, tmp_path, capsys):
    """fedurl-eval --calibrate --write: the table, and the chosen tau where every completer reads it."""
    # Prepare
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    urls = tmp_path / "held_out.txt"
    urls.write_text("https://www.google.com/\ngithub.com/login\nen.wikipedia.org/wiki/Python\nnew-host.org\n")
    exclude = tmp_path / "train.txt"
    exclude.write_text("new-host.org/some/page\n")
    # Execute
    main(["--calibrate", "--write", "--bundle", str(bundle), "--urls", str(urls), "--exclude", str(exclude),
          "--tau", "0.5", "1", "--max-ksr-loss", "1"])
    # Assert
    table = capsys.readouterr().out
    assert "(3 URLs)" in table and "<- calibrated" in table
    assert Completer(bundle).threshold == 1.0 == min_probability(load_bundle(bundle).manifest)
    assert Completer(bundle).complete("goo") == [], "tau 1 shows nothing"


@pytest.mark.parametrize("argv", [["--write"], ["--calibrate", "--tau", "1.5"],
                                  ["--calibrate", "--tau", "-1"], ["--calibrate", "--max-ksr-loss", "1.5"]])
def test_calibrate_refuses_bad_options(bundle_dir, tmp_path, argv):
    urls = tmp_path / "held_out.txt"
    urls.write_text("google.com\n")
    with pytest.raises(SystemExit, match="2"):
        main(["--bundle", str(bundle_dir), "--urls", str(urls), *argv])
