"""fedurl-participants: a few simulated people beside a running server, so one person sees a round.

A secure round ([T1]) needs a cohort of at least three: the sum of one or two updates is no
secret, so the server never aggregates fewer. ``make demo`` therefore starts this command beside
the server: each participant is the Python client (``client.protocol``) with its own enrolled id
and a slice of public URLs (the top-sites list that ``npm ci`` installs by default; never the
bundle's ``validation.txt``, which the server's publish gate holds out). It
checks in for every round, and when drawn it trains on its slice with the bundle's own training
graph (``runtime.trainer``) and takes part in the secure phases, or uploads in plain mode. With
a cohort of participants + 1, every round waits for the person at the page to check in: the page
shows the cohort forming, then the person's masked update joins the participants' in one sum.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from client.protocol import FederatedClient, ProtocolError, SecureParticipant, flatten
from formats.bundle import load_bundle
from formats.urls import DEFAULT_CORPUS, load_urls
from runtime.trainer import LocalTrainer

log = logging.getLogger("fedurl.participants")

SECURE_PHASES = set(SecureParticipant.PHASES)
MAX_WAIT_S = 5.0  # ask again at least this often, whatever retry_after_s says: the demo should feel live


def wait_for_server(server: str, timeout_s: float, stop: threading.Event) -> FederatedClient:
    """Poll /api/status until the server answers (it may still be starting); a client of it."""
    fed, give_up = FederatedClient(server), time.monotonic() + timeout_s
    while not stop.is_set():
        try:
            fed.status()
            break
        except OSError as error:
            if time.monotonic() > give_up:
                raise SystemExit(f"fedurl-participants: no server at {server} after {timeout_s:.0f} s "
                                 f"({error})") from error
            stop.wait(0.5)
    return fed


class Participant:
    """One simulated person: an enrolled client id and the URLs it 'visited'."""

    def __init__(self, name: str, server: str, urls: list[str], trainer: LocalTrainer, lr: float,
                 epochs: int):
        self.name, self.urls, self.trainer, self.lr, self.epochs = name, urls, trainer, lr, epochs
        self.fed = FederatedClient(server)
        self.rounds_done, self.last_round = 0, None

    def take_part(self, stop: threading.Event) -> None:
        """Check in until drawn, then train and contribute to that round once."""
        while not stop.is_set():
            answer = self.fed.check_in()
            if answer["state"] in ("selected", "open") and answer["round"] != self.last_round:
                break  # (still "selected" for the round just done while the others finish it)
            stop.wait(min(MAX_WAIT_S, max(0.2, float(answer["retry_after_s"]))))
        else:
            return
        secure = answer["phase"] in SECURE_PHASES
        model = self.fed.fetch_model()
        ticket = self.fed.ticket()
        start = self.fed.global_weights()
        result = self.trainer.train(start, self.urls, epochs=self.epochs, lr=self.lr,
                                    seed=random.randrange(2**31))
        delta = {name: result.weights[name] - start[name] for name in start}
        if secure:
            flat = flatten(delta, model["manifest"]["parameters"])
            SecureParticipant(self.fed, ticket, flat).run(poll_s=0.5)
            how = "its masked update joined the secure sum"
        else:
            self.fed.upload(delta, ticket, result.num_examples, result.loss_before, result.loss_after)
            how = "its update was accepted"
        self.rounds_done, self.last_round = self.rounds_done + 1, ticket["round"]
        log.info("%s: round %s on version %s: trained on %d URLs (loss %.3f -> %.3f); %s", self.name,
                 ticket["round"], ticket["version"], len(self.urls), result.loss_before, result.loss_after,
                 how)

    def run(self, rounds: int, stop: threading.Event) -> None:
        """Enroll, then take part in rounds until stopped (rounds 0) or after that many."""
        self.fed.enroll()
        while not stop.is_set() and (rounds == 0 or self.rounds_done < rounds):
            try:
                self.take_part(stop)
            except ProtocolError as error:  # e.g. the round ended without us: join the next one
                log.info("%s: %s (%s); checking in again", self.name, error.message, error.code)
                stop.wait(1.0)


def build_parser() -> argparse.ArgumentParser:
    """Every option and its default, in one place."""
    parser = argparse.ArgumentParser(
        prog="fedurl-participants",
        description=__doc__.split("\n\n")[0] + " Each participant trains on its own slice of public "
        "URLs and takes part in every round it is drawn into, secure or plain; stop with Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--server", default="http://127.0.0.1:5000", help="the running fedurl-serve")
    parser.add_argument("--count", type=int, default=3, help="simulated participants")
    parser.add_argument("--urls", type=Path, default=DEFAULT_CORPUS,
                        help="public URLs (one per line, or top-sites JSON), dealt out")
    parser.add_argument("--urls-each", type=int, default=24, help="URLs each participant trains on")
    parser.add_argument("--lr", type=float, default=0.1, help="local SGD learning rate")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--rounds", type=int, default=0,
                        help="rounds each takes part in, then stop (0: until Ctrl-C)")
    parser.add_argument("--wait-s", type=float, default=120.0,
                        help="how long to wait for the server to answer")
    parser.add_argument("--seed", type=int, default=0, help="seed of how URLs are dealt")
    return parser


def main(argv: list[str] | None = None, stop: threading.Event | None = None) -> int:
    """Run the participants until stop is set, Ctrl-C, or each took part in --rounds rounds."""
    args = build_parser().parse_args(argv)
    if args.count < 1 or args.urls_each < 1 or args.rounds < 0 or args.epochs < 1:
        raise SystemExit("fedurl-participants: --count, --urls-each and --epochs must be >= 1, --rounds >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        urls = load_urls(args.urls, None)
    except FileNotFoundError as error:
        raise SystemExit(f"fedurl-participants: {error}") from error
    if len(urls) < args.count:
        raise SystemExit(f"fedurl-participants: {args.urls} has {len(urls)} URLs, "
                         f"fewer than --count {args.count}")
    random.Random(args.seed).shuffle(urls)
    stop = stop or threading.Event()
    probe = wait_for_server(args.server, args.wait_s, stop)
    with tempfile.TemporaryDirectory(prefix="fedurl-participants-") as work:
        probe.fetch_model()
        trainer = LocalTrainer(load_bundle(probe.save_bundle(Path(work) / "bundle")))
        people = [Participant(f"participant {i + 1}", args.server,
                              urls[i * args.urls_each:(i + 1) * args.urls_each] or urls[i::args.count],
                              trainer, args.lr, args.epochs) for i in range(args.count)]
        failures: list[BaseException] = []

        def run(person: Participant) -> None:
            try:
                person.run(args.rounds, stop)
            except BaseException as error:  # reported below; one failure stops the others
                failures.append(error)
                stop.set()

        threads = [threading.Thread(target=run, args=(p,), name=p.name, daemon=True) for p in people]
        for thread in threads:
            thread.start()
        log.info("%d participants checking in at %s", len(people), args.server)
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except KeyboardInterrupt:
            stop.set()
    if failures:
        print(f"fedurl-participants: {failures[0]!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
