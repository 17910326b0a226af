"""The one order state machine (SPEC): every state change of every order goes through `transition`.

DRAFT → STAGED → APPROVED → SUBMITTED → PARTIALLY_FILLED → FILLED, with REJECTED, EXPIRED,
CANCELLED and UNKNOWN (connection lost while the broker held the order). Terminal states have no
way out; an illegal move raises `IllegalTransition` naming both states, it never silently passes.
"""
from __future__ import annotations

from enum import StrEnum


class OrderState(StrEnum):
    DRAFT = "DRAFT"
    STAGED = "STAGED"
    APPROVED = "APPROVED"
    SUBMITTED = "SUBMITTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"


S = OrderState

ALLOWED: dict[OrderState, frozenset[OrderState]] = {
    S.DRAFT: frozenset({S.STAGED, S.CANCELLED}),
    S.STAGED: frozenset({S.APPROVED, S.REJECTED, S.EXPIRED, S.CANCELLED}),
    # An approved order may still be refused by the pre-transmission re-check (REJECTED).
    S.APPROVED: frozenset({S.SUBMITTED, S.REJECTED, S.EXPIRED, S.CANCELLED}),
    S.SUBMITTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.REJECTED, S.CANCELLED, S.UNKNOWN}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.UNKNOWN}),
    # After a lost connection the broker's own report decides where the order really is.
    S.UNKNOWN: frozenset({S.SUBMITTED, S.PARTIALLY_FILLED, S.FILLED, S.REJECTED, S.CANCELLED}),
    S.FILLED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL = frozenset(s for s, nxt in ALLOWED.items() if not nxt)
# States in which a broker may hold the order: nothing reaches one without passing APPROVED.
TRANSMITTED = frozenset({S.SUBMITTED, S.PARTIALLY_FILLED, S.FILLED, S.UNKNOWN})


class IllegalTransition(ValueError):
    def __init__(self, current: OrderState, target: OrderState):
        super().__init__(f"illegal order transition {current} -> {target}")
        self.current = current
        self.target = target


def can_transition(current: OrderState | str, target: OrderState | str) -> bool:
    return OrderState(target) in ALLOWED[OrderState(current)]


def transition(current: OrderState | str, target: OrderState | str) -> OrderState:
    """Return `target` if the move is legal, else raise `IllegalTransition`."""
    cur, tgt = OrderState(current), OrderState(target)
    if tgt not in ALLOWED[cur]:
        raise IllegalTransition(cur, tgt)
    return tgt
