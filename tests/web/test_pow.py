"""web_client/pow.js solves server/identity.py's puzzles; what that costs an honest browser is a
benchmark (bench/bench_browser.py --parts pow), not a timed test."""

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

def test_the_javascript_sha256_matches_webcrypto_at_every_length(module_page):
    """Lengths around the 55/56/64-byte padding edges, and a puzzle-shaped text."""
    texts = ["", "abc", "a" * 55, "a" * 56, "a" * 63, "a" * 64, "a" * 119, "x" * 200,
             WorkPuzzles(18, 60).issue(time.time()).puzzle + ":1234567"]
    for mine, webcrypto in module_page.evaluate(DIGESTS, texts):
        assert mine == webcrypto
