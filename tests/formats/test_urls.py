"""URL normalisation rules (formats/urls.py), typed-prefix mapping and corpus specs."""

import argparse
from pathlib import Path

import pytest

from formats.urls import (
    MAX_URL_CHARS,
    corpus_name,
    corpus_spec,
    normalize_url,
    read_corpora,
    read_corpus,
    split_typed,
)


@pytest.mark.parametrize("raw, expected", [
    ("https://www.GitHub.com/", "github.com"),
    ("\ufeffhttps://example.org/a", "example.org/a"),
    ("http://example.org/path/\r\n", "example.org/path/"),
    ("  example.org/a b\tc  ", "example.org/a%20b%20c"),
    ("HTTP://Example.COM:80/Case/Kept", "example.com/Case/Kept"),
    ("https://user:secret@host.org./x?q=1#top", "host.org/x?q=1"),
    ("localhost:8080/admin", "localhost:8080/admin"),
    ("https://例え.jp/パス", "例え.jp/パス"),
    ("https://e\u0301cole.fr", "\u00e9cole.fr"),  # NFC: e + combining acute -> é
    ("ftp://files.example.org", None),
    ("javascript:alert(1)", None),
    ("", None),
    ("   \r\n", None),
    ("https://", None),
    ("a.com/" + "x" * MAX_URL_CHARS, None),
])
def test_normalize_url(raw, expected):
    assert normalize_url(raw) == expected


@pytest.mark.parametrize("typed, fill, canonical", [
    ("", "", ""),
    ("githu", "", "githu"),
    ("HTTPS://WWW.GitHu", "", "githu"),
    ("https:/", "/", ""),
    ("http", "", "http"),
    ("Example.com/Path", "", "example.com/Path"),
])
def test_split_typed(typed, fill, canonical):
    assert split_typed(typed) == (fill, canonical)


def test_read_corpus_drops_blank_duplicate_and_foreign_lines(tmp_path):
    corpus = tmp_path / "urls.txt"
    corpus.write_bytes("\ufeffhttps://a.org/x\r\nhttp://www.a.org/x\r\n\r\nmailto:me@a.org\nb.org\n".encode())
    assert read_corpus(corpus) == ["a.org/x", "b.org"]


def test_a_range_takes_the_usable_urls_m_to_n_counted_from_one(tmp_path):
    corpus = tmp_path / "ranks.txt"
    corpus.write_text("a.com\nb.com\n\na.com\nc.com\nd.com\ne.com\n")  # a blank line, a repeat: no URL
    specs = [corpus_spec(f"{corpus}:2"), corpus_spec(f"{corpus}:4-5")]
    assert specs == [(corpus, slice(0, 2)), (corpus, slice(3, 5))]
    assert read_corpora(specs) == ["a.com", "b.com", "d.com", "e.com"]
    assert corpus_name(specs + [corpus_spec(str(corpus))]) == "ranks.txt:2+ranks.txt:4-5+ranks.txt"


@pytest.mark.parametrize("spec", ["urls.txt:0", "urls.txt:0-3", "urls.txt:5-4"])
def test_an_empty_or_backward_range_is_refused(spec):
    with pytest.raises(argparse.ArgumentTypeError, match="N must be positive and M at most N"):
        corpus_spec(spec)


@pytest.mark.parametrize("spec", ["C:/urls.txt", "urls-2-3.txt", "urls.txt:-3", "urls.txt:2-",
                                  "urls.txt:a-3"])
def test_a_name_that_is_no_range_stays_a_file_name(spec):
    assert corpus_spec(spec) == (Path(spec), None)
