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
