"""protocol.js's WorkerClient: every request settles, even when its worker cannot answer."""

from __future__ import annotations

# Each request races a 3 s timer, so a request that never settles reads "hung" instead of
# stalling the test; every other outcome is the error message or the reply's type.
ASK = """async ([script, types]) => {
  const { WorkerClient } = await import("/static/protocol.js");
  const url = script.startsWith("/") ? script
    : URL.createObjectURL(new Blob([script], { type: "text/javascript" }));
  const client = new WorkerClient(new Worker(url, { type: "module" }));
  const settle = (promise) => Promise.race([
    promise.then((reply) => reply.type, (error) => `rejected: ${error.message}`),
    new Promise((resolve) => setTimeout(() => resolve("hung"), 3000))]);
  const outcomes = [];
  for (const type of types) outcomes.push(await settle(client.request(type, {})));
  client.worker.terminate();
  return outcomes;
}"""

# Answers `complete`; on `load` it throws outside any handler's try, as a stray callback would.
FLAKY_WORKER = """
self.addEventListener("message", ({ data }) => {
  if (data.type === "load") setTimeout(() => { throw new Error("stray"); });
  else self.postMessage({ type: "suggestions", id: data.id });
});
"""


def test_requests_to_a_worker_whose_script_did_not_load_are_rejected(module_page):
    """A missing worker script: the request in flight and every later one fail instead of hanging."""
    # Execute
    outcomes = module_page.evaluate(ASK, ["/static/no-such-worker.js", ["load", "complete", "complete"]])
    # Assert
    assert outcomes == ["rejected: worker failed: its script did not load"] * 3


def test_an_error_after_the_worker_answered_fails_only_what_was_pending(module_page):
    """A stray error in a worker that has answered rejects what was pending; later requests get replies."""
    # Execute
    outcomes = module_page.evaluate(ASK, [FLAKY_WORKER, ["complete", "load", "complete", "complete"]])
    # Assert
    assert outcomes[0] == "suggestions"
    assert outcomes[1].startswith("rejected: worker failed:") and "stray" in outcomes[1]
    assert outcomes[2:] == ["suggestions", "suggestions"]
