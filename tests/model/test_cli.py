"""The export and eval commands: help, clear errors on bad input, a table on good input."""

import json

import pytest

from formats.bundle import DEFAULT_MIN_PROBABILITY, load_bundle
from model import export
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


def test_eval_prints_model_8gram_trie_and_fused_rows(bundle_dir, tmp_path, capsys):
    held_out = tmp_path / "test.txt"
    held_out.write_text("https://www.google.com/\ngithub.com/login\n")
    train = tmp_path / "train.txt"
    train.write_text("google.com\ngoogle.com\ngithub.com/login\n")
    evaluate.main(["--bundle", str(bundle_dir), "--urls", str(held_out), "--train", str(train)])
    table = capsys.readouterr().out
    rows = {line[:14].strip(): line.split()[-1] for line in table.splitlines()[1:5]}
    assert set(rows) == {"model", "8-gram", "trie", "model + 8-gram"} and "KSR@3" in table
    # "github.com/login" is known to both baselines: typed "g", each offers it whole (2 keys of 16).
    assert float(rows["trie"]) > 0 and float(rows["8-gram"]) > 0
    assert float(rows["model + 8-gram"]) >= float(rows["8-gram"])  # the 8-gram's lists are in the mix


def test_eval_prunes_only_the_fused_8gram(bundle_dir, tmp_path, capsys):
    """--fuse-min-count 2: the once-seen github.com/login leaves the fused 8-gram, not the yardstick."""
    held_out = tmp_path / "test.txt"
    held_out.write_text("github.com/login\n")
    train = tmp_path / "train.txt"
    train.write_text("google.com\ngoogle.com\ngithub.com/login\n")
    argv = ["--bundle", str(bundle_dir), "--urls", str(held_out), "--train", str(train), "--json"]
    evaluate.main(argv)
    whole = json.loads(capsys.readouterr().out)
    evaluate.main([*argv, "--fuse-min-count", "2"])
    pruned = json.loads(capsys.readouterr().out)
    fused, fused_pruned = whole["model + 8-gram"], pruned["model + 8-gram"]
    assert pruned["8-gram"] == whole["8-gram"] and fused["entries"] == whole["8-gram"]["entries"]
    assert fused_pruned["entries"] < fused["entries"] and fused_pruned["min_count"] == 2
    with pytest.raises(SystemExit, match="2"):
        evaluate.main([*argv, "--fuse-min-count", "0"])


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
    assert specs[1] == (second, 2)
    assert export.read_corpora(specs) == ["a.com/x", "b.com", "c.com", "d.com"]


def test_a_zero_count_is_refused(capsys):
    with pytest.raises(SystemExit):
        export.main(["--corpus", "urls.txt:0"])
    assert "N must be positive" in capsys.readouterr().err


def test_export_writes_the_default_threshold(bundle_dir):
    """Every exported manifest names its suggestion threshold; fedurl-eval --calibrate retunes it."""
    assert load_bundle(bundle_dir).manifest["completion"] == {"min_probability": DEFAULT_MIN_PROBABILITY}
