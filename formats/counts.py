"""counts.bin: a bundle's character n-gram counts (the count component the completer mixes in),
as a trie a browser reads straight into typed arrays.

Why not JSON: 417k contexts and 740k counts (``pretrained/``, counts below 5 pruned) are 3.22 MB
this way (1.7 MB gzipped) and would be tens of MB as a JS ``Map`` of strings; this layout is a
handful of typed arrays and a lookup is a walk of at most order - 1 binary searches. The JS twin is
``CountTrie`` in ``web_client/ngram.js``; both read the same bytes (tests/web/test_counts_js.py).

Layout, little-endian:

=======  =========================  ==================================================
offset   field                      meaning
=======  =========================  ==================================================
0        ``FUCT``                   magic
4        u8 version                 1
5        u8 order                   symbols of context + 1 (runtime/ngram.py's ORDER)
6        u16 A                      alphabet size, 1..255
8        u32 N                      contexts (trie nodes), root included
12       u32 E                      (context, symbol) counts
16       u32 U                      URLs counted (``CharNgramLM.urls``)
20       u32 x A                    the alphabet: code points, strictly ascending
...      u8 x N                     each node's symbol (alphabet index; the root's is 0)
...      u8 x N                     each node's number of children
...      u8 x N                     each node's number of counts
...      u8 x E                     each count's symbol (alphabet index)
...      varint x N                 each node's total c(ctx) (unsigned LEB128, at most 5 bytes)
...      varint x E                 each count c(ctx, x), at least 1
=======  =========================  ==================================================

The nodes are a breadth-first walk of the trie of contexts read right to left: the root is the
empty context, and the children of context ``ctx`` are the contexts ``a + ctx`` (one more symbol
on the left), in alphabet order. So node i's children are consecutive, after those of the nodes
before it, and its counts are consecutive too, in alphabet order. A context's total is over every
count before pruning (``CharNgramLM.prune``), so it may exceed the sum of the counts it keeps.
Every context's suffix (``ctx[1:]``) is a context too: pruning keeps that (c(ctx[1:], x) is at
least c(ctx, x)), and ``decode`` needs it.
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = b"FUCT"
VERSION = 1
HEADER = struct.Struct("<4sBBHIII")
MAX_ALPHABET = 255
MAX_VARINT_BYTES = 5  # u32 totals and counts


class CountsFormatError(ValueError):
    """counts.bin is truncated, of another version or inconsistent."""


def _varints(values: list[int]) -> bytes:
    out = bytearray()
    for value in values:
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def _read_varints(data: np.ndarray, offset: int, count: int) -> tuple[np.ndarray, int]:
    """The next count LEB128 varints from data[offset:] (vectorised: the ends are the bytes below 0x80)."""
    if count == 0:
        return np.zeros(0, np.int64), offset
    ends = np.flatnonzero(data[offset:] < 0x80)
    if len(ends) < count:
        raise CountsFormatError("counts.bin is truncated: fewer varints than counts")
    ends = ends[:count] + offset
    starts = np.concatenate(([offset], ends[:-1] + 1))
    if int((ends - starts).max()) >= MAX_VARINT_BYTES:
        raise CountsFormatError("counts.bin has a varint longer than 5 bytes")
    chunk = data[offset:ends[-1] + 1].astype(np.int64)
    position = np.arange(len(chunk)) - np.repeat(starts - offset, ends - starts + 1)
    values = np.add.reduceat((chunk & 0x7F) << (7 * position), starts - offset)
    if int(values.max()) > 0xFFFFFFFF:
        raise CountsFormatError("counts.bin has a varint above 2^32 - 1")
    return values, int(ends[-1]) + 1


def encode(order: int, counts: dict[str, dict[str, int]], totals: dict[str, int], urls: int) -> bytes:
    """The bytes of a CharNgramLM's tables (``runtime.ngram.CharNgramLM.to_bytes``)."""
    alphabet = sorted({s for ctx in counts for s in ctx} | {x for table in counts.values() for x in table})
    if not 1 <= len(alphabet) <= MAX_ALPHABET:
        raise ValueError(f"{len(alphabet)} symbols: counts.bin holds 1 to {MAX_ALPHABET} (prune more)")
    index = {s: i for i, s in enumerate(alphabet)}
    children: dict[str, list[str]] = {ctx: [] for ctx in counts}
    children.setdefault("", [])
    for ctx in counts:
        if ctx:
            if ctx[1:] not in children:
                raise ValueError(f"context {ctx!r} has no suffix context {ctx[1:]!r}")
            children[ctx[1:]].append(ctx)
    nodes, head = [""], 0
    while head < len(nodes):  # breadth first, each node's children in alphabet order
        nodes += sorted(children[nodes[head]], key=lambda ctx: index[ctx[0]])
        head += 1
    symbols = [index[ctx[0]] if ctx else 0 for ctx in nodes]
    tables = [sorted(counts.get(ctx, {}).items(), key=lambda item: index[item[0]]) for ctx in nodes]
    entries = [(index[x], c) for table in tables for x, c in table]
    return b"".join((
        HEADER.pack(MAGIC, VERSION, order, len(alphabet), len(nodes), len(entries), urls),
        struct.pack(f"<{len(alphabet)}I", *map(ord, alphabet)),
        bytes(symbols), bytes(len(children[ctx]) for ctx in nodes), bytes(map(len, tables)),
        bytes(x for x, _ in entries),
        _varints([totals.get(ctx, 0) for ctx in nodes]), _varints([c for _, c in entries])))


def decode(data: bytes) -> tuple[int, dict[str, dict[str, int]], dict[str, int], int]:
    """(order, counts, totals, urls) of counts.bin, with every field checked.

    :raise CountsFormatError: for anything but what ``encode`` writes.
    """
    if len(data) < HEADER.size:
        raise CountsFormatError("counts.bin is truncated: no header")
    magic, version, order, size, n, e, urls = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise CountsFormatError(f"not a version {VERSION} counts.bin (magic {magic!r}, version {version})")
    if not 1 <= order or not 1 <= size <= MAX_ALPHABET or n < 1:
        raise CountsFormatError(f"counts.bin header: order {order}, alphabet {size}, {n} contexts")
    offset = HEADER.size + 4 * size
    if len(data) < offset + 3 * n + e:
        raise CountsFormatError("counts.bin is truncated")
    points = struct.unpack_from(f"<{size}I", data, HEADER.size)
    if any(a >= b for a, b in zip(points, points[1:], strict=False)) or points[-1] > 0x10FFFF:
        raise CountsFormatError("counts.bin alphabet is not strictly ascending code points")
    alphabet = [chr(p) for p in points]
    raw = np.frombuffer(data, np.uint8)
    symbols, kids, sizes = (raw[offset + i * n:offset + (i + 1) * n] for i in range(3))
    entry_symbols = raw[offset + 3 * n:offset + 3 * n + e]
    totals_array, offset = _read_varints(raw, offset + 3 * n + e, n)
    values, offset = _read_varints(raw, offset, e)
    if offset != len(data):
        raise CountsFormatError("counts.bin has bytes after its last count")
    if int(kids.sum()) != n - 1 or int(sizes.sum()) != e:
        raise CountsFormatError("counts.bin node children or counts do not add up")
    if max(int(symbols.max()), int(entry_symbols.max(initial=0))) >= size or (e and int(values.min()) < 1):
        raise CountsFormatError("counts.bin has a symbol outside its alphabet or a zero count")
    symbol_list, kid_list, size_list = symbols.tolist(), kids.tolist(), sizes.tolist()
    entry_list, totals_list, value_list = entry_symbols.tolist(), totals_array.tolist(), values.tolist()
    contexts, first_child, entry = [""], 1, 0
    counts: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for i in range(n):
        if i == len(contexts):
            raise CountsFormatError(f"counts.bin node {i} is no node's child")
        ctx, end = contexts[i], first_child + kid_list[i]
        below, table_symbols = symbol_list[first_child:end], entry_list[entry:entry + size_list[i]]
        if end > n or (len(ctx) >= order - 1 and below):
            raise CountsFormatError("counts.bin trie is deeper than its order or overruns its nodes")
        if not _ascending(below) or not _ascending(table_symbols):
            raise CountsFormatError(f"counts.bin context {ctx!r}: symbols not in strictly ascending order")
        contexts += [alphabet[s] + ctx for s in below]
        table = dict(zip((alphabet[s] for s in table_symbols), value_list[entry:entry + size_list[i]],
                         strict=True))
        first_child, entry = end, entry + size_list[i]
        if sum(table.values()) > totals_list[i]:
            raise CountsFormatError(f"counts.bin context {ctx!r}: counts above its total")
        if table:
            counts[ctx] = table
            totals[ctx] = totals_list[i]
    return order, counts, totals, urls


def _ascending(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))
