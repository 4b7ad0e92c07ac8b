"""The character n-gram (runtime/ngram.py): backoff scores and suggestions counted by hand."""

import math

import pytest

from runtime.ngram import BOS, COUNT_FLOOR, EOS, CharNgramLM, fuse, mix, repeated_words, with_repeats


def test_counts_every_context_length():
    """"ab" at order 2: each symbol counted after "" and after the one symbol before it."""
    lm = CharNgramLM(["ab"], order=2)
    assert lm.counts == {"": {"a": 1, "b": 1, EOS: 1}, BOS: {"a": 1}, "a": {"b": 1}, "b": {EOS: 1}}
    assert lm.totals == {"": 3, BOS: 1, "a": 1, "b": 1}


def test_backoff_score_by_hand():
    """Order 3 on "abc", "abd": after "ab" c and d split 1/2; after the unseen "zb" the context
    "b" costs one alpha (0.4 x 1/2) and "" two (0.16 x count/8)."""
    lm = CharNgramLM(["abc", "abd"], order=3, alpha=0.4)
    assert lm.scores(BOS + "ab") == pytest.approx({"c": 0.5, "d": 0.5, "a": 0.16 * 2 / 8,
                                                   "b": 0.16 * 2 / 8, EOS: 0.16 * 2 / 8})
    assert lm.scores("zb") == pytest.approx({"c": 0.2, "d": 0.2, "a": 0.04, "b": 0.04, EOS: 0.04})


def test_interpolated_score_by_hand():
    """Order 2 on "ab" twice and "ac", discount 0.5. After "a": b keeps (2 - 0.5) / 3 and c
    0.5 / 3, leaving 1/3 to the empty context (9 counts), whose discounted counts leave 2/9 of
    that to the 4 symbols alike: b 1/2 + 1.5/27 + 0.5/27, c 1/6 + 0.5/27 + 0.5/27, a and EOS
    2.5/27 + 0.5/27. A probability: it sums to 1 after any history, seen or not."""
    lm = CharNgramLM(["ab", "ab", "ac"], order=2, discount=0.5)
    assert lm.scores(BOS + "a") == pytest.approx({"b": 0.5 + 2 / 27, "c": 1 / 6 + 1 / 27, "a": 1 / 9,
                                                  EOS: 1 / 9})
    for history in (BOS, BOS + "a", "b", "z"):
        assert sum(lm.scores(history).values()) == pytest.approx(1)
    assert lm.scores("z") == pytest.approx({"a": 3 / 9, "b": 2 / 9, "c": 1 / 9, EOS: 3 / 9})


def test_pruned_counts_go_to_the_shorter_contexts():
    """Pruned below 2, "abd" leaves the tables but not the totals: after "ab" (total 3), c keeps
    (2 - 1) / 3 and passes on 2/3, d's count included; "b" likewise (c: 2/3 x 1/3, passes on 4/9);
    the empty context (a, b, EOS 3, c 2, d 1 pruned: total 12) gives c 4/9 x 1/12 and leaves
    4/9 x 5/12 to its 4 kept symbols alike: c 1/3 + 2/9 + 1/27 + 5/108 = 23/36, summing to 1."""
    lm = CharNgramLM(["abc", "abc", "abd"], order=3, discount=1.0)
    lm.prune(2)
    scores = lm.scores(BOS + "ab")
    assert "d" not in scores and sum(scores.values()) == pytest.approx(1)
    assert scores["c"] == pytest.approx(23 / 36)


def test_prune_drops_rare_counts_and_keeps_totals():
    """Order 3 on "abc" twice and "abd" once, pruned below 2: after "ab" only c stays, still 2/3
    of the context's 3; d, seen once in every context, is gone from all of them."""
    lm = CharNgramLM(["abc", "abc", "abd"], order=3, alpha=0.4)
    before = lm.entries()
    lm.prune(2)
    assert lm.entries() < before and lm.counts["ab"] == {"c": 2} and lm.totals["ab"] == 3
    assert "d" not in lm.counts[""] and lm.scores(BOS + "ab")["c"] == pytest.approx(2 / 3)
    assert "d" not in lm.scores(BOS + "ab")
    assert lm.complete("ab", 1) == ["abc"] and "abd" not in lm.complete("ab", 5)


def test_keep_commonest_drops_rare_symbols_everywhere_and_keeps_totals():
    """Order 2 on "ab" twice and "ac": after "", a and EOS (3 each) are the two commonest; b and c
    leave every table, the contexts "b" and "c", and "a" (which only predicted them)."""
    lm = CharNgramLM(["ab", "ab", "ac"], order=2)
    lm.keep_commonest(2)
    assert lm.counts == {"": {"a": 3, EOS: 3}, BOS: {"a": 3}}
    assert lm.totals == {"": 9, BOS: 3}
    assert CharNgramLM.from_bytes(lm.to_bytes()).counts == lm.counts


def test_adding_urls_one_by_one_equals_building_at_once():
    urls = ["a.com/x", "b.org", "a.com/y?q=1"]
    one_by_one = CharNgramLM()
    for url in urls:
        one_by_one.add(url)
    at_once = CharNgramLM(urls)
    assert (one_by_one.counts, one_by_one.totals) == (at_once.counts, at_once.totals)
    assert one_by_one.complete("a", 3) == at_once.complete("a", 3)


def test_suggestions_stop_at_the_end_of_the_host_and_of_a_path_segment():
    """"/" right after the typed text does not end a suggestion; the next "/" or "?" does."""
    lm = CharNgramLM(["a.com/x/y", "a.com/x/z", "a.com/s?q=1"])
    # x then "/": 2/3 x 1; s then "?": 1/3 x 1 (endings backed off to "" add under 0.4^7 = 0.0016)
    assert lm.complete_scored("a.com", 2) == [("a.com/x", pytest.approx(2 / 3, abs=0.0016)),
                                              ("a.com/s", pytest.approx(1 / 3, abs=0.0016))]
    assert lm.complete("a.c", 1) == ["a.com"]
    assert lm.complete("a.com/s", 1) == ["a.com/s?q=1"]  # "?" at position 0 does not end it


def test_score_of_any_suggestion_by_hand():
    """What fuse asks of the counts for a network suggestion. "a.com/" -> "a.com/x": S(x) 2/3, then
    every symbol that may end it: "/" 2/2, and EOS and "?" seen only at context "" (3 and 1 of the 32
    symbols, 0.4^7 each). The search itself may stop before adding such tiny endings, so it gives at
    most this; a symbol never counted scores 0."""
    lm = CharNgramLM(["a.com/x/y", "a.com/x/z", "a.com/s?q=1"], every_length=True)  # finds a.com/x
    assert lm.score("a.com/", "a.com/x") == pytest.approx(2 / 3 * (1 + 4 / 32 * 0.4 ** 7), rel=1e-12)
    assert lm.score("HTTPS://A.com/", "HTTPS://A.com/x") == lm.score("a.com/", "a.com/x")
    found = dict(lm.complete_scored("a.com/", 3))
    assert 0 < found["a.com/x"] <= lm.score("a.com/", "a.com/x")
    assert lm.score("a.com/", "a.com/\u00e9") == 0


def test_one_character_past_the_host_only_for_the_yardstick():
    """The completers' n-grams never finish a one-character text past the host (it saves no key);
    the yardstick of goal 1 (every_length) does, and both do in the host."""
    urls = ["a.com/x/y", "a.com/x/z", "a.com/x/yz"]
    shown, yardstick = CharNgramLM(urls), CharNgramLM(urls, every_length=True)
    assert shown.complete("a.com/x/", 1) == ["a.com/x/yz"]
    assert all(len(text) >= len("a.com/x/") + 2 for text in shown.complete("a.com/x/", 3))
    assert {"a.com/x/y", "a.com/x/z"} <= set(yardstick.complete("a.com/x/", 3))
    assert shown.complete("a.co", 1) == yardstick.complete("a.co", 1) == ["a.com"]


def test_equal_scores_tie_by_text_and_merge_by_addition():
    """After "a.com/x/" each leaf scores 1/2 x (EOS: 1, plus "/" backed off 7 times to "": 4 of 20);
    one character each, so only the yardstick (every_length) offers them."""
    lm = CharNgramLM(["a.com/x/y", "a.com/x/z"], every_length=True)
    leaf = pytest.approx(0.5 * (1 + 0.4 ** 7 * 4 / 20))
    assert lm.complete_scored("a.com/x/", 2) == [("a.com/x/y", leaf), ("a.com/x/z", leaf)]
    # Two ways to end "a.com" add up: "/" (1 x 1 x 1) and EOS, seen only after the empty
    # context: 2 of its 20 symbols, 7 contexts shortened.
    assert lm.complete_scored("a.c", 1) == [("a.com", pytest.approx(1 + 2 / 20 * 0.4 ** 7))]


def test_suggestions_keep_exactly_what_was_typed():
    lm = CharNgramLM(["github.com/python/cpython"])
    assert lm.complete("HTTPS://www.GitHub.com/py", 1) == ["HTTPS://www.GitHub.com/python"]


def test_no_urls_and_no_k_give_nothing():
    assert CharNgramLM().complete("a", 5) == []
    assert CharNgramLM(["a.com"]).complete("a", 0) == []


def test_mix_weighs_model_probability_against_personal_score():
    """w = 0.5: "b" 0.5 x 0.6 = 0.3 beats "a" 0.5 x 0.2 + 0.5 x 0.3 = 0.25; "c" 0.5 x 0.1."""
    model = [("b", -0.5108256237659907), ("a", -1.6094379124341003)]  # log 0.6, log 0.2
    assert mix(model, [("a", 0.3), ("c", 0.1)], 3, weight=0.5) == ["b", "a", "c"]
    assert mix(model, [], 1) == ["b"], "no personal suggestion: the model's list as it is"


def test_mix_gives_the_personal_ngram_most_of_the_weight_by_default():
    """w = 0.15: "a" 0.15 x 0.2 + 0.85 x 0.3 = 0.285 beats "b" 0.15 x 0.6 = 0.09, "c" 0.85 x 0.1 = 0.085."""
    model = [("b", math.log(0.6)), ("a", math.log(0.2))]
    assert mix(model, [("a", 0.3), ("c", 0.1)], 3) == ["a", "b", "c"]


def test_fuse_multiplies_the_two_sides_scores_then_shares_them_out_by_hand():
    """w = 0.5: a 0.5 x 0.1 -> sqrt(0.05), b 0.25 x 0.4 -> sqrt(0.1) overtakes it; c, never counted,
    is floored and last. The shares sum to 1 over the list and come back as logs."""
    scored = [("a", math.log(0.5), 0.1), ("b", math.log(0.25), 0.4), ("c", math.log(0.9), 0.0)]
    fused = fuse(scored, 3)
    assert [text for text, _ in fused] == ["b", "a", "c"]
    shares = [math.sqrt(0.1), math.sqrt(0.05), math.sqrt(0.9 * COUNT_FLOOR)]
    assert [math.exp(score) for _, score in fused] == pytest.approx([s / sum(shares) for s in shares])
    weighted = fuse(scored, 3, weight=0.9)  # the network's 0.9 x log: c's 0.9 still loses to the floor
    assert [text for text, _ in weighted] == ["a", "b", "c"]
    assert fuse(scored, 1) == fused[:1] and fuse([], 3) == []
    assert fuse([*scored, ("d", -math.inf, 0.9)], 4) == fused, "out of the network's reach: dropped"
    assert fuse([("a", -1.0, 0.2), ("b", -1.0, 0.2)], 2)[0][0] == "a", "ties by text"


@pytest.mark.parametrize(("typed", "expected"), [
    ("bdnews24.com/bd", ["bdnews24.com/bdnews24"]),
    ("HTTPS://www.BDnews24.com/bd", ["HTTPS://www.BDnews24.com/bdnews24"]),  # as typed, words canonical
    ("x.com/foo?q=foobar&z=fo", ["x.com/foo?q=foobar&z=foobar"]),
    ("a.com/ab/abc/abcd/ab", ["a.com/ab/abc/abcd/abcd"]),  # "abc" adds one character: saves no key
    ("a.com/abab/abcd/abab/ab", ["a.com/abab/abcd/abab/abab", "a.com/abab/abcd/abab/abcd"]),  # twice first
    ("a.com/abcf/abce/abcd/ab", ["a.com/abcf/abce/abcd/abcd", "a.com/abcf/abce/abcd/abce"]),  # ties by text
    ("bdnews24.com", []), ("bdnews24.com.bd", []),  # the host: completed inline, not here
    ("bdnews24.com/b", []),  # one typed character
    ("w3schools.com/html5/tryit.ht", []),  # tryit.html5 is junk: nothing after .html
    ("x.com/2024 ", []), ("x.com/2024%20", ["x.com/2024%2024"]),  # a space is no word; "%20" typed is
    ("ftp://ftpserver.ft", []), ("ftp://ftpserver/ft", ["ftp://ftpserver/ftpserver"]),  # the host after ://
    ("bdnews24.com/bd/", []), ("a.com/é/ab", []), ("", []),
])
def test_repeated_words_finish_the_typed_word_as_one_typed_earlier(typed, expected):
    assert repeated_words(typed) == expected


def test_with_repeats_shares_out_the_list_by_hand():
    """w = 0.5: the repeat "r" gets 0.5, "a" 0.5 x 0.6 = 0.3, "b" 0.5 x 0.4 = 0.2; shares sum to 1;
    a repeat that fuse also proposed adds both: 0.5 x 0.5 + 0.5."""
    typed = "a.com/abcd/ab"
    repeat = "a.com/abcd/abcd"
    fused = [(typed + "x1", math.log(0.6)), (typed + "x2", math.log(0.4))]
    mixed = with_repeats(fused, typed, 3)
    assert [text for text, _ in mixed] == [repeat, typed + "x1", typed + "x2"]
    assert [math.exp(s) for _, s in mixed] == pytest.approx([0.5, 0.3, 0.2])
    both = with_repeats([(repeat, math.log(0.1)), *fused], typed, 2, weight=0.2)
    assert [(t, math.exp(s)) for t, s in both] == [(typed + "x1", pytest.approx(0.48)),
                                                    (typed + "x2", pytest.approx(0.32))]
    assert dict(with_repeats([(repeat, math.log(0.5))], typed, 1))[repeat] == pytest.approx(math.log(0.75))
    assert with_repeats(fused, "a.com/x", 1) == fused[:1], "no repeat: fuse's list as it is"
    assert with_repeats([], typed, 3) == [(repeat, math.log(0.5))], "fuse found nothing: w alone"
