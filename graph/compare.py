"""Node-by-node comparison of two runs' final states: what each node wrote, and how it differs.

Used by replays (does the sandbox reproduce the original?) and forks (what did the changed
configuration change?). Each node is compared on the state channels it writes, keyed by ticker
(and by analyst for signals), never on ids or timestamps that differ by construction between two
runs: run ids, order ids, idempotency keys, creation times.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.analysts import ANALYSTS

# The nodes whose output a comparison covers, in graph order. `aggregate_signals` writes nothing
# to the state (it stores the signals), and approval/execution do nothing in a sandbox.
COMPARED_NODES: tuple[str, ...] = (
    "load_context", *ANALYSTS, "select_candidates", "debate", "risk_gate", "strategy_selector",
    "kelly_allocator", "post_trade_check", "stage_orders",
)

# Floats are compared to this relative tolerance: two runs of the same code on the same inputs
# agree to the last bit, but a replay must not be called diverged over a last-bit rounding.
REL_TOL = 1e-9
ABS_TOL = 1e-12
MAX_DIFF_ITEMS = 3  # differences spelled out in a node's one-line summary; `differences` has them all
_MISSING = object()


@dataclass(frozen=True)
class NodeComparison:
    node: str
    matched: bool
    diff: str  # "" when matched; otherwise the first differences, "path: original → other"
    rerun: bool = True  # False: a fork copied this node's output from the original, it did not run
    # Every difference in full: {"path", "original", "other"} (absent side: missing), and for two
    # texts (debate transcripts, rationales) a line diff under "text_diff".
    differences: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _by_ticker(items: list, key: Callable[[Any], str] = lambda v: v.ticker, view=_dump) -> dict[str, Any]:
    """{ticker: dumped item}; a second item for one ticker is keyed `TICKER#2` (never silently lost)."""
    out: dict[str, Any] = {}
    for item in items or []:
        name = key(item)
        slot, n = name, 1
        while slot in out:
            n += 1
            slot = f"{name}#{n}"
        out[slot] = view(item)
    return out


def _staged_view(order) -> dict[str, Any]:
    """What makes a staged order the same order in two runs (not its ids, state or time)."""
    return {
        "ticker": order.ticker, "structure": order.structure, "legs": order.proposal["legs"],
        "quantity": order.quantity, "limit_price": str(order.limit_price),
    }


def node_outputs(state: Mapping[str, Any], node: str) -> dict[str, Any] | None:
    """The comparable output of `node` in `state`, or None when the node never wrote it."""
    if node == "load_context":
        ctx = state.get("context")
        return None if ctx is None else {"regime": _dump(ctx.regime), "snapshot_sha256": ctx.snapshot_sha256}
    if node in ANALYSTS:
        # every analyst task writes one signal per ticker (a "missing data" one if need be)
        signals = [s for s in state.get("signals", []) if s.source == node]
        return _by_ticker(signals) if signals else None
    channels = {
        "select_candidates": {"candidates": _by_ticker},
        "debate": {"verdicts": _by_ticker},
        "risk_gate": {"pre_trade": _by_ticker},
        "strategy_selector": {"proposals": _by_ticker, "rejected_proposals": dict},
        "kelly_allocator": {"sized": lambda items: _by_ticker(items, key=lambda t: t.proposal.ticker)},
        "post_trade_check": {"post_trade": _by_ticker},
        "stage_orders": {"staged": lambda items: _by_ticker(items, view=_staged_view)},
    }.get(node)
    if channels is None:
        raise ValueError(f"no comparison defined for node {node!r}; compared nodes: {list(COMPARED_NODES)}")
    if not any(channel in state for channel in channels):
        return None
    return {channel: view(state.get(channel) or ({} if channel == "rejected_proposals" else []))
            for channel, view in channels.items()}


def _short(value: Any, width: int = 48) -> str:
    text = "∅" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _leaf_differences(a: Any, b: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(path, original, other) for every leaf where `a` and `b` differ; a missing side is `_MISSING`;
    lists of different lengths differ as wholes (floats compared to REL_TOL)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{key}" if path else str(key)
            yield from _leaf_differences(a.get(key, _MISSING), b.get(key, _MISSING), sub)
        return
    if a is _MISSING or b is _MISSING:
        yield path, a, b
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b) or (_as_text(a) is not None and _as_text(b) is not None):
            if a != b:  # a transcript differs as a whole: it is read (and text-diffed) as one text
                yield path, a, b
            return
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _leaf_differences(x, y, f"{path}[{i}]")
        return
    if isinstance(a, float) and isinstance(b, float) and not isinstance(a, bool) and not isinstance(b, bool):
        if not _same_float(a, b):
            yield path, a, b
        return
    if not (a == b and type(a) is type(b)):
        yield path, a, b


def value_differences(a: Any, b: Any, path: str, other: str) -> list[str]:
    """Every leaf where `a` (the original) and `b` differ, as "path: a → b" (floats to REL_TOL)."""
    out = []
    for where, x, y in _leaf_differences(a, b, path):
        if y is _MISSING:
            out.append(f"{where}: only in original")
        elif x is _MISSING:
            out.append(f"{where}: only in {other}")
        elif isinstance(x, list) and isinstance(y, list):
            out.append(f"{where}: {len(x)} items → {len(y)}" if len(x) != len(y) else f"{where}: the text differs")
        else:
            out.append(f"{where}: {_short(x)} → {_short(y)}")
    return out


def _as_text(value: Any) -> str | None:
    """A transcript (list of turns) or a long string as lines, for a line diff; else None."""
    if isinstance(value, str) and (len(value) > 48 or "\n" in value):
        return value
    if isinstance(value, list) and value and all(isinstance(t, dict) and "text" in t for t in value):
        return "\n\n".join(f"[{t.get('role', '?')}{' r' + str(t['round']) if 'round' in t else ''}] {t['text']}"
                            for t in value)
    return None


def detailed_differences(a: Any, b: Any, path: str = "") -> list[dict[str, Any]]:
    """Every difference in full, for machines (`--json`): nothing is shortened or left out."""
    out = []
    for where, x, y in _leaf_differences(a, b, path):
        item: dict[str, Any] = {"path": where}
        if x is not _MISSING:
            item["original"] = x
        if y is not _MISSING:
            item["other"] = y
        x_text, y_text = _as_text(x), _as_text(y)
        if x_text is not None and y_text is not None:
            item["text_diff"] = list(difflib.unified_diff(
                x_text.splitlines(), y_text.splitlines(), "original", "other", lineterm="", n=1))
        out.append(item)
    return out


def compare_node(original: Mapping[str, Any], other: Mapping[str, Any], node: str, *,
                 other_label: str = "replay", rerun: bool = True) -> NodeComparison:
    a, b = node_outputs(original, node), node_outputs(other, node)
    if a is None and b is None:
        return NodeComparison(node, True, "", rerun)
    if a is None:
        return NodeComparison(node, False, f"the original never reached {node}; the {other_label} did", rerun)
    if b is None:
        return NodeComparison(node, False, f"the {other_label} never reached {node}", rerun)
    diffs = value_differences(a, b, "", other_label)
    text = "; ".join(diffs[:MAX_DIFF_ITEMS]) + (f" (+{len(diffs) - MAX_DIFF_ITEMS} more)" if len(diffs) > MAX_DIFF_ITEMS else "")
    return NodeComparison(node, not diffs, text, rerun, detailed_differences(a, b))


def compare_states(original: Mapping[str, Any], other: Mapping[str, Any], *, other_label: str = "replay",
                   copied: frozenset[str] = frozenset()) -> list[NodeComparison]:
    """One comparison per node of `COMPARED_NODES`; nodes in `copied` are marked as not re-run."""
    return [compare_node(original, other, node, other_label=other_label, rerun=node not in copied)
            for node in COMPARED_NODES]
