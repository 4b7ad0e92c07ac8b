"""The export and eval commands: help, clear errors on bad input, a table on good input."""

import shutil

import pytest

from formats.bundle import DEFAULT_MIN_PROBABILITY, load_bundle
from model import counts, export
from model.lm import LMConfig
from runtime.complete import Completer
from runtime.ngram import FusedCompleter, fuse, open_completer
from study import evaluate


def test_export_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--corpus", "--out", "--vocab-size", "--steps", "--seed", "top-sites"):
        assert option in out


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be positive"),
    (["--vocab-size", "-5"], "--vocab-size must be positive"),
    (["--hidden-width", "0"], "--hidden-width must be positive"),
    (["--unknown"], "unrecognized arguments"),
])
def test_export_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        export.main(argv)
    assert message in capsys.readouterr().err


def test_export_reports_a_missing_or_tiny_corpus(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        export.main(["--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "b")])
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a.org\nb.org\n")
    with pytest.raises(SystemExit, match="need at least 10"):
        export.main(["--corpus", str(tiny), "--out", str(tmp_path / "b")])


def test_eval_prints_model_network_8gram_and_trie_rows(bundle_dir, tmp_path, capsys):
    """The test bundle has counts.bin: "model" is what the page shows, "network" the network alone."""
    held_out = tmp_path / "test.txt"
    held_out.write_text("https://www.google.com/\ngithub.com/login\n")
    train = tmp_path / "train.txt"
    train.write_text("google.com\ngoogle.com\ngithub.com/login\n")
    evaluate.main(["--bundle", str(bundle_dir), "--urls", str(held_out), "--train", str(train)])
    table = capsys.readouterr().out
    rows = {line[:14].strip(): line.split()[-1] for line in table.splitlines()[1:5]}
    assert set(rows) == {"model", "network", "8-gram", "trie"} and "KSR@3" in table
    # "github.com/login" is known to both baselines: typed "g", each offers it whole (2 keys of 16).
    assert float(rows["trie"]) > 0 and float(rows["8-gram"]) > 0
    assert "counts below 5 pruned" in table


def test_counts_command_gives_a_bundle_its_count_component(bundle_dir, tmp_path, capsys):
    """python -m model.counts: counts.bin in the manifest (sha256 checked), and the completer mixes
    it in: a host only the counts know is suggested, as ``fuse`` of the two sides ranks it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    corpus = tmp_path / "corpus.txt"
    # 40 URLs: their shared prefix is counted well above the discount (COUNT_DISCOUNT)
    corpus.write_text("".join(f"zqxv.example/page{i}\n" for i in range(40)))
    counts.main([str(bundle), "--corpus", str(corpus), "--min-count", "2"])
    manifest = load_bundle(bundle).manifest
    assert manifest["counts"]["urls"] == 40 and manifest["counts"]["min_count"] == 2
    assert "counts.bin" in manifest["files"] and "from 40 URLs" in capsys.readouterr().out
    completer = open_completer(bundle)
    assert isinstance(completer, FusedCompleter)
    suggestions = completer.complete_scored("zqx", 3)
    assert suggestions[0][0].startswith("zqxv."), "only the counts know zqxv"
    assert suggestions == fuse(both_ways(completer, "zqx", completer.counts.complete_scored("zqx", 6)), 3)
    completer.threshold = 0.5  # the network's tau, applied to the counts' scores S too
    assert completer.completer.threshold == 0.5
    likely = [(text, s) for text, s in completer.counts.complete_scored("zqx", 6) if s >= 0.5]
    assert 0 < len(likely) < len(completer.counts.complete_scored("zqx", 6))
    assert completer.complete_scored("zqx", 3) == fuse(both_ways(completer, "zqx", likely), 3)


def both_ways(completer, typed, counts):
    """The network's six and the given count suggestions, each scored by both sides, network's first."""
    network = dict(completer.completer.complete_scored(typed, 6))
    others = [text for text, _ in counts if text not in network]
    network.update(zip(others, completer.completer.log_probs(typed, others), strict=True))
    return [(text, log_prob, dict(counts).get(text, completer.counts.score(typed, text)))
            for text, log_prob in network.items()]


def test_a_bundle_without_counts_suggests_with_its_network_alone(bundle_dir, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    counts.remove_counts(bundle)
    assert type(open_completer(bundle)) is Completer


@pytest.mark.parametrize("argv, message", [
    (["--corpus", "missing.txt"], "missing.txt"),
    ([], "--corpus"),
    (["--corpus", "{corpus}", "--min-count", "0"], "at least 1"),
])
def test_counts_command_refuses_bad_input(argv, message, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a.org\n")
    with pytest.raises(SystemExit) as exit_info:
        counts.main([str(tmp_path), *(a.format(corpus=corpus) for a in argv)])
    assert message in f"{exit_info.value.code} {capsys.readouterr().err}"


def test_counts_command_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a.org\n")
    with pytest.raises(SystemExit, match="not a model bundle"):
        counts.main([str(tmp_path), "--corpus", str(corpus)])


def test_export_refuses_counts_it_cannot_make_before_training(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"site{i}.org\n" for i in range(12)))
    with pytest.raises(SystemExit, match="no count of the corpus reaches 1000.*--no-counts"):
        export.main(["--corpus", str(corpus), "--out", str(tmp_path / "b"), "--counts-min-count", "1000"])
    assert not (tmp_path / "b").exists()


def test_eval_reports_a_bad_bundle(tmp_path, capsys):
    urls = tmp_path / "u.txt"
    urls.write_text("a.org\n")
    with pytest.raises(SystemExit, match="not a model bundle"):
        evaluate.main(["--bundle", str(tmp_path), "--urls", str(urls)])


@pytest.mark.parametrize("urls, expected", [(500, 1000), (43_000, 2688), (1_000_000, 4000)])
def test_default_steps_are_about_four_epochs_within_bounds(urls, expected):
    assert export.default_steps(urls, 64) == expected


def test_several_corpora_combine_in_order_each_cut_to_its_count(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("https://www.A.com/x\nb.com\nc.com\n")
    second.write_text("c.com\nd.com\ne.com\nf.com\n")
    specs = [export.corpus_spec(str(first)), export.corpus_spec(f"{second}:2")]
    assert specs[1] == (second, slice(0, 2))
    assert export.read_corpora(specs) == ["a.com/x", "b.com", "c.com", "d.com"]


def test_a_zero_count_is_refused(capsys):
    with pytest.raises(SystemExit):
        export.main(["--corpus", "urls.txt:0"])
    assert "N must be positive" in capsys.readouterr().err


def test_export_writes_the_default_threshold(bundle_dir):
    """Every exported manifest names its suggestion threshold; fedurl-eval --calibrate retunes it."""
    assert load_bundle(bundle_dir).manifest["completion"] == {"min_probability": DEFAULT_MIN_PROBABILITY}


def test_export_passes_the_counts_options_on(monkeypatch, tmp_path):
    """--counts-min-count N prunes below N, --no-counts writes none (the test bundle, exported with
    the defaults, ships counts.bin: tests/formats/test_bundle.py)."""
    calls = []
    monkeypatch.setattr(export, "export_bundle", lambda *args, **kwargs: calls.append(args) or {
        "files": {}, "training": {"parameters": 1, "final_loss": 1.0, "seconds": 0.0}})
    export.main(["--out", str(tmp_path / "a"), "--counts-min-count", "3"])
    export.main(["--out", str(tmp_path / "b"), "--no-counts"])
    export.main(["--out", str(tmp_path / "c")])
    assert [args[-1] for args in calls] == [3, None, counts.MIN_COUNT]


def test_export_passes_the_network_widths_on(monkeypatch, tmp_path):
    """--embedding-width and --hidden-width size the network (the capacity table in docs/RESULTS.md);
    left out, they are LMConfig's defaults."""
    configs = []
    monkeypatch.setattr(export, "export_bundle", lambda urls, out, config, *rest: configs.append(config) or {
        "files": {}, "training": {"parameters": 1, "final_loss": 1.0, "seconds": 0.0}})
    export.main(["--out", str(tmp_path / "a"), "--embedding-width", "96", "--hidden-width", "192"])
    export.main(["--out", str(tmp_path / "b")])
    assert [(c.n_embd, c.n_hidden) for c in configs] == [(96, 192), (LMConfig().n_embd, LMConfig().n_hidden)]
