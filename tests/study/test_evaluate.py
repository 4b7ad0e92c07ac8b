"""KSR and the frequency-trie baseline on examples small enough to count by hand."""

import pytest

from formats.bundle import load_bundle
from study.evaluate import FrequencyTrie, keystroke_savings, keystrokes, next_token_metrics


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
