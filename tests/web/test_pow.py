"""web_client/pow.js solves server/identity.py's puzzles; an honest browser pays about a second."""

from __future__ import annotations

import time

from server.identity import WorkPuzzles

SOLVE = """async ([puzzle, difficulty]) => {
  const { solvePuzzle } = await import("/static/pow.js");
  return await solvePuzzle(puzzle, difficulty);
}"""


def test_the_browser_solution_is_accepted_by_the_server(module_page):
    puzzles = WorkPuzzles(difficulty=12, ttl_s=60)
    issued = puzzles.issue(time.time())
    # Execute
    got = module_page.evaluate(SOLVE, [issued.puzzle, issued.difficulty])
    # Assert: the server accepts it, and it is the first solution (the same counter Python finds)
    puzzles.redeem(issued.puzzle, got["counter"], time.time())
    assert got["tried"] == int(got["counter"]) + 1


DIGESTS = """async (texts) => {
  const { sha256 } = await import("/static/pow.js");
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const out = [];
  for (const text of texts) {
    const bytes = new TextEncoder().encode(text);
    out.push([hex(sha256(bytes)), hex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)))]);
  }
  return out;
}"""

RATE = """async ([puzzle, difficulty]) => {
  const { solvePuzzle } = await import("/static/pow.js");
  await solvePuzzle("warm-up", 12);
  let tried = 0, ms = 0;
  for (let i = 0; i < 4; i++) {
    const t0 = performance.now();
    tried += (await solvePuzzle(`${puzzle}-${i}`, difficulty)).tried;
    ms += performance.now() - t0;
  }
  return { tried, ms };
}"""


def test_the_javascript_sha256_matches_webcrypto_at_every_length(module_page):
    """Lengths around the 55/56/64-byte padding edges, and a puzzle-shaped text."""
    texts = ["", "abc", "a" * 55, "a" * 56, "a" * 63, "a" * 64, "a" * 119, "x" * 200,
             WorkPuzzles(18, 60).issue(time.time()).puzzle + ":1234567"]
    for mine, webcrypto in module_page.evaluate(DIGESTS, texts):
        assert mine == webcrypto


def test_an_honest_browser_pays_under_two_seconds_at_the_default_difficulty(module_page):
    """Measured hash rate x 2^POW_DIFFICULTY: about 0.6-0.9 s in Debian's Chromium on the shared
    2-core test box (300-450k hashes/s; WebCrypto one digest at a time managed 80k/s)."""
    from server.config import SETTINGS

    got = module_page.evaluate(RATE, ["rate", 16])
    rate = got["tried"] / (got["ms"] / 1000)
    expected_s = 2 ** SETTINGS["POW_DIFFICULTY"].default / rate
    print(f"pow.js: {rate:,.0f} hashes/s, {expected_s:.2f} s expected at the default difficulty")
    assert expected_s <= 2.0
