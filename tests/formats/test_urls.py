"""URL normalisation rules (formats/urls.py) and typed-prefix mapping."""

import pytest

from formats.urls import MAX_URL_CHARS, normalize_url, read_corpus, split_typed


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
