"""The one order state machine: legal paths work, every illegal move is refused (hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.order_state import (
    ALLOWED,
    TERMINAL,
    TRANSMITTED,
    IllegalTransition,
    OrderState,
    can_transition,
    transition,
)

STATES = list(OrderState)


def test_the_happy_path_is_legal():
    path = [OrderState.DRAFT, OrderState.STAGED, OrderState.APPROVED, OrderState.SUBMITTED,
            OrderState.PARTIALLY_FILLED, OrderState.FILLED]
    for current, target in zip(path, path[1:]):
        assert transition(current, target) is target


def test_terminal_states_have_no_exit():
    assert TERMINAL == {OrderState.FILLED, OrderState.REJECTED, OrderState.EXPIRED, OrderState.CANCELLED}
    for state in TERMINAL:
        for target in STATES:
            with pytest.raises(IllegalTransition):
                transition(state, target)


def test_nothing_reaches_a_broker_state_without_approval():
    # The only ways into SUBMITTED-or-later start at APPROVED or at another transmitted state.
    for source, targets in ALLOWED.items():
        if targets & TRANSMITTED and source not in TRANSMITTED:
            assert source is OrderState.APPROVED


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STATES), st.sampled_from(STATES))
def test_transition_agrees_with_the_table(current, target):
    if target in ALLOWED[current]:
        assert transition(current, target) is target
        assert can_transition(current, target)
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(current, target)
        assert info.value.current is current and info.value.target is target
        assert not can_transition(current, target)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(STATES), min_size=1, max_size=12))
def test_any_walk_obeys_the_table(walk):
    state = OrderState.DRAFT
    for target in walk:
        if can_transition(state, target):
            state = transition(state, target)
        else:
            with pytest.raises(IllegalTransition):
                transition(state, target)
    assert state in OrderState


def test_unknown_state_names_are_errors():
    with pytest.raises(ValueError):
        transition("DRAFT", "SHIPPED")
