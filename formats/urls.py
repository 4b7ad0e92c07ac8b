"""URL normalisation: the one canonical form the tokenizer, the model and the history all use.

Rules, applied in this order by ``normalize_url`` (the browser applies the same in JS):

1. Strip a leading UTF-8 BOM and surrounding whitespace (so CRLF files read cleanly);
   an empty line gives ``None``.
2. Unicode NFC, so one visible URL has one spelling.
3. Internal whitespace runs become ``%20`` (what a browser sends for a typed space).
4. The scheme: ``http://`` and ``https://`` are dropped (people do not type them, and which one
   a site uses is not worth the model's capacity); any other scheme (``ftp:``, ``javascript:``,
   ``data:`` ...) gives ``None``. A leading ``www.`` is dropped for the same reason.
5. The host is lower-cased, loses user-info (``user:pass@``), a default port (``:80``,
   ``:443``) and a trailing dot. No host gives ``None``.
6. The fragment (``#...``) is dropped: it never reaches a server and is rarely typed.
7. A lone trailing ``/`` after the host is dropped (``github.com/`` -> ``github.com``); a
   trailing ``/`` on a longer path is kept, because servers treat it as a different URL.
8. Results longer than ``MAX_URL_CHARS`` give ``None`` (tracking links and session ids are
   not worth completing). ``read_corpus`` also drops exact duplicates, keeping the first.

Suggestions are shown in this canonical form; ``split_typed`` maps what a user typed
(possibly with a scheme, ``www.`` or capitals) onto it and back.
"""

from __future__ import annotations

import argparse
import json
import re
import unicodedata
from pathlib import Path

MAX_URL_CHARS = 200
_WEB_SCHEME = re.compile(r"^https?://", re.IGNORECASE)
_OTHER_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:(?!\d)")  # 'host:8080' is a port, not a scheme
_WHITESPACE = re.compile(r"\s+")
_HOST_END = re.compile(r"[/?#]")
_SCHEME_IN_PROGRESS = re.compile(r"^https?:/{0,2}$", re.IGNORECASE)


def normalize_url(raw: str) -> str | None:
    """Canonical form of one URL (see the module docstring), or None if it is not usable."""
    text = raw.lstrip("\ufeff").strip()
    if not text:
        return None
    text = _WHITESPACE.sub("%20", unicodedata.normalize("NFC", text))
    web = _WEB_SCHEME.match(text)
    if web:
        text = text[web.end():]
    elif _OTHER_SCHEME.match(text):
        return None
    end = _HOST_END.search(text)
    host, rest = (text[:end.start()], text[end.start():]) if end else (text, "")
    host = _clean_host(host)
    if not host:
        return None
    rest = rest.split("#", 1)[0]
    if rest == "/":
        rest = ""
    url = host + rest
    return url if len(url) <= MAX_URL_CHARS else None


def _clean_host(host: str) -> str:
    """Lower-case the host and drop user-info, default ports, a trailing dot and 'www.'."""
    host = host.rsplit("@", 1)[-1].lower()
    for port in (":80", ":443"):
        host = host.removesuffix(port)
    host = host.rstrip(".")
    return host.removeprefix("www.")


def split_typed(typed: str) -> tuple[str, str]:
    """Map text typed in the URL bar to (fill, canonical prefix).

    A suggestion for ``typed`` is ``typed + fill + completion``, where ``completion`` continues
    the canonical prefix; so every suggestion starts with exactly what the user typed.
    ``fill`` is non-empty only while a scheme is half typed (``"https:/"`` -> ``"/"``).
    """
    if _SCHEME_IN_PROGRESS.match(typed):
        full = "https://" if typed.lower().startswith("https") else "http://"
        return full[len(typed):], ""
    text = typed.lstrip("\ufeff")
    scheme = _WEB_SCHEME.match(text)
    if scheme:
        text = text[scheme.end():]
    if text[:4].lower() == "www.":
        text = text[4:]
    end = _HOST_END.search(text)
    host, rest = (text[:end.start()], text[end.start():]) if end else (text, "")
    return "", _WHITESPACE.sub("%20", unicodedata.normalize("NFC", host.lower() + rest))


def read_corpus(path, limit: int | None = None) -> list[str]:
    """Normalised, de-duplicated URLs of a text file with one URL (or bare domain) per line."""
    seen: dict[str, None] = {}
    with open(Path(path), encoding="utf-8", errors="replace", newline="") as handle:
        for line in handle:
            url = normalize_url(line)
            if url is not None:
                seen.setdefault(url)
                if limit is not None and len(seen) >= limit:
                    break
    return list(seen)


REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO / "web_client" / "node_modules" / "top-sites" / "top-sites.json"


def load_urls(path: Path, limit: int | None) -> list[str]:
    """Canonical URLs of a corpus: a text file (one per line) or the top-sites JSON.

    :raise FileNotFoundError: with a hint when the default corpus is not installed.
    """
    path = Path(path)
    if not path.is_file():
        hint = (" (run `npm ci` in web_client/ to install the default corpus)"
                if path == DEFAULT_CORPUS else "")
        raise FileNotFoundError(f"corpus {path} not found{hint}")
    if path.suffix == ".json":
        entries = json.loads(path.read_text())
        urls = list(dict.fromkeys(u for u in (normalize_url(e["rootDomain"]) for e in entries) if u))
        return urls[:limit]
    return read_corpus(path, limit)


def corpus_spec(text: str) -> tuple[Path, slice | None]:
    """--corpus FILE, FILE:N (its first N usable URLs) or FILE:M-N (its usable URLs M to N, from 1):
    the path and which of its URLs, or None for all. A range keeps a held-out slice out of a corpus.
    """
    path, colon, part = text.rpartition(":")
    m, dash, n = part.rpartition("-")  # "N": ("", "", "N")
    if not (colon and path and n.isdigit() and (m.isdigit() if dash else not m)):
        return Path(text), None
    first, last = int(m) if dash else 1, int(n)
    if not 0 < first <= last:
        raise argparse.ArgumentTypeError(f"{text}: N must be positive and M at most N")
    return Path(path), slice(first - 1, last)


def corpus_name(specs: list[tuple[Path, slice | None]]) -> str:
    """The corpora as a manifest records them: file names joined by "+", each with its :N or :M-N."""
    def part(chosen: slice | None) -> str:
        if chosen is None:
            return ""
        return f":{chosen.stop}" if chosen.start == 0 else f":{chosen.start + 1}-{chosen.stop}"
    return "+".join(path.name + part(chosen) for path, chosen in specs)


def read_corpora(specs: list[tuple[Path, slice | None]]) -> list[str]:
    """The canonical URLs of every corpus in order, each cut to its part, duplicates dropped.

    :raise FileNotFoundError: for a missing corpus file.
    """
    urls: dict[str, None] = {}
    for path, chosen in specs:
        found = load_urls(path, None if chosen is None else chosen.stop)
        urls.update(dict.fromkeys(found if chosen is None else found[chosen]))
    return list(urls)
