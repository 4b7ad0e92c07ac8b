"""Why the federation refuses a request: domain exceptions with a stable code, and no HTTP.

The coordinator (``server.rounds``) raises these; ``server.errors`` maps each class to its HTTP
status and renders ``{"error": code, "message": ...}``. The codes are the wire codes of
docs/PROTOCOL.md, so a class's ``code`` never changes; a new refusal is a new class here plus
one line in ``errors.STATUS``.
"""

from __future__ import annotations

from typing import ClassVar


class Refused(Exception):
    """A request the federation turns down: a stable machine code and a sentence for people."""

    code: ClassVar[str] = "refused"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnknownBaseVersion(Refused):
    """An update's base_version was never a version of this server."""

    code = "unknown_version"


class StaleVersion(Refused):
    """An update's base version is too far behind the current one, or was rolled back."""

    code = "stale_version"


class TicketInvalid(Refused):
    """No such ticket."""

    code = "ticket_invalid"


class TicketMismatch(Refused):
    """The ticket was issued to another client id."""

    code = "ticket_mismatch"


class TicketReused(Refused):
    """The ticket was already used."""

    code = "ticket_reused"


class TicketSpent(Refused):
    """The ticket went to an upload refused for its own content (rounds.SPENDS_TICKET)."""

    code = "ticket_spent"


class TicketExpired(Refused):
    """The ticket is past its expiry."""

    code = "ticket_expired"


class VersionMismatch(Refused):
    """The update's base_version differs from its ticket's version."""

    code = "version_mismatch"


class DuplicateClient(Refused):
    """The client already has an update in the open round."""

    code = "duplicate_client"


class NetworkFull(Refused):
    """A FedBuff buffer already holds MAX_MEMBERS_PER_NETWORK updates from the upload's network."""

    code = "network_full"


class EmptyRound(Refused):
    """An admin close of a round that has no update."""

    code = "empty_round"


class NoSuchVersion(Refused):
    """An admin rollback to a version that does not exist."""

    code = "unknown_version"


class NotEarlier(Refused):
    """An admin rollback to the current version."""

    code = "not_earlier"


class VersionDamaged(Refused):
    """An admin rollback to a version whose files no longer match their sha256."""

    code = "version_damaged"


class UnsafeWeights(Refused):
    """Closing the round would publish non-finite or out-of-range weights."""

    code = "unsafe_weights"


class NotSelected(Refused):
    """A ticket asked for by a client that is not in the reporting round's cohort."""

    code = "not_selected"


class RoundClosed(Refused):
    """An update whose ticket belongs to a round that has ended (cohorts: late reports do not count)."""

    code = "round_closed"


class PrivacyBudgetSpent(Refused):
    """A check-in, ticket or update once one more round would take epsilon above DP_EPSILON_BUDGET."""

    code = "privacy_budget_spent"


class NotEnrolled(Refused):
    """A check-in or ticket from a client id that has not enrolled with the required proofs."""

    code = "not_enrolled"


class SecureOnly(Refused):
    """A plain update sent to a server that aggregates securely ([T1]): it would be stored in clear."""

    code = "secure_only"


class NotSecure(Refused):
    """A secure-round request to a server (or a round) that does not aggregate securely."""

    code = "not_secure"


class WrongSender(Refused):
    """A secure message whose header names another cohort index than the ticket's member."""

    code = "wrong_sender"


class WrongPhase(Refused):
    """A secure message or download that the round's current phase does not take or give (yet)."""

    code = "wrong_phase"


class BadSecureMessage(Refused):
    """Secure-aggregation bytes that the protocol refuses (malformed, twice, not a neighbour...)."""

    code = "bad_secure_message"
