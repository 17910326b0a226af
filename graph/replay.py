"""Replay a recorded run, or fork it with changed parameters, in a sandbox; report node by node.

A replay re-executes a run from its recordings alone: the market snapshot it saw, the
`DecisionConfig` it recorded, and — when its debate used an LLM — the LLM answers it recorded
(served by prompt hash; a prompt the run never sent is a divergence, not a network call). A fork
copies the original's state from the checkpoint just before one node into a new thread and runs on
from there with a changed configuration.

Both run as new `sandbox` runs (their own run row and thread, `parent_run_id` the original):
nothing is written to the order book, no interrupt waits for an approver, no broker is attached.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import count
from typing import Any

from pydantic import ValidationError

from agents.analysts import ANALYSTS
from agents.debate import DeterministicDebater
from agents.llm_debate import RecordedChatBackend, ReplayDivergence, make_replay_debater
from config.settings import DecisionConfig, defaults
from graph.compare import COMPARED_NODES, NodeComparison, compare_states
from graph.deps import MarketCache
from graph.graph import build_graph, compiled_graph
from graph.runner import RunFailed, _advance, make_deps
from domain.decision import AccountState, Candidate, Regime, Signal, Verdict
from storage.database import Database, LockBusy
from storage.decisions import DecisionRepository
from storage.llm_calls import LLMCallRepository
from storage.runs import RunRecord, RunRepository
from tools.providers.base import MarketSnapshot

# Nodes a fork can start at. Each after the analysts has exactly one static predecessor in the
# graph, as which the copied state is written so that LangGraph continues at the node itself. An
# analyst runs as per-ticker `Send` tasks of load_context: its fork writes the state as
# load_context (which sends every analyst task again) and records the other analysts' original
# results as those tasks' finished writes, so that only the chosen analyst's tasks run.
# Approval and execution do nothing in a sandbox.
FORKABLE_NODES: tuple[str, ...] = (
    "load_context", *ANALYSTS, "select_candidates", "debate", "risk_gate", "strategy_selector", "kelly_allocator",
    "post_trade_check", "stage_orders",
)
RECORDED_PROVIDER = "recorded"


class ReplayError(ValueError):
    """A replay or fork that cannot be made as asked (unknown run or node, no recording, bad setting,
    or a fork whose LLM debate would need prompts the original never sent)."""


class RecordedInputMismatch(ValueError):
    """A recorded snapshot was asked for another time or other tickers than it recorded."""


# --- the recorded inputs ---------------------------------------------------------------------------

class RecordedProvider:
    """A `MarketDataProvider` that answers with one recorded `MarketSnapshot` and nothing else.

    It answers only the request the snapshot recorded: the same instant (`as_of`, any time zone)
    and the same set of tickers (any order). Anything else is refused, because the recording
    cannot say what the market looked like then or for those names.
    """

    name = RECORDED_PROVIDER

    def __init__(self, snapshot: MarketSnapshot, *, as_of: datetime | None = None,
                 tickers: Sequence[str] | None = None):
        self.recorded = snapshot
        self.as_of = as_of if as_of is not None else snapshot.as_of
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        self.tickers = frozenset(tickers if tickers is not None else snapshot.tickers)

    def snapshot(self, tickers: Sequence[str], as_of: datetime) -> MarketSnapshot:
        if as_of.tzinfo is None or as_of != self.as_of:
            raise RecordedInputMismatch(
                f"the recording is as of {self.as_of.isoformat()}; it cannot answer for {as_of.isoformat()}")
        asked = frozenset(tickers)
        if asked != self.tickers:
            extra, missing = sorted(asked - self.tickers), sorted(self.tickers - asked)
            raise RecordedInputMismatch(
                f"the recording holds tickers {sorted(self.tickers)}; asked for {sorted(asked)}"
                + (f" (not recorded: {extra})" if extra else "") + (f" (recorded but not asked: {missing})" if missing else ""))
        return self.recorded


class RecordedMemory:
    """Recalls, per ticker, exactly the memories the original debate was given (its verdicts'
    `memories_used`), so a replayed LLM prompt is the prompt the original sent."""

    def __init__(self, verdicts: Sequence[Verdict]):
        self._by_ticker = {v.ticker: list(v.memories_used) for v in verdicts}

    async def recall(self, candidate: Candidate, signals: list[Signal], regime: Regime) -> list[str]:
        return list(self._by_ticker.get(candidate.ticker, []))


# --- settings from the command line ------------------------------------------------------------------

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`["kelly_multiplier=0.25", "debate_rounds=2"]` → `{"kelly_multiplier": 0.25, "debate_rounds": 2}`.

    Values are typed by the `DecisionConfig` field (int, float, bool, str); an unknown key, a value
    of the wrong type, a non-finite float or a key given twice is a `ReplayError`. Ranges are
    checked when the configuration is built (`DecisionConfig.with_overrides`).
    """
    fields = DecisionConfig.model_fields
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ReplayError(f"--set takes key=value, got {item!r}")
        if key not in fields:
            raise ReplayError(f"unknown decision setting {key!r}; known: {', '.join(sorted(fields))}")
        if key in out:
            raise ReplayError(f"{key} is set twice")
        annotation = fields[key].annotation
        try:
            if annotation is bool:
                if text.lower() not in _TRUE | _FALSE:
                    raise ValueError
                value: Any = text.lower() in _TRUE
            elif annotation is int:
                value = int(text)
            elif annotation is float:
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError
            else:
                value = text
        except ValueError:
            kind = getattr(annotation, "__name__", str(annotation))
            raise ReplayError(f"{key} takes a finite {kind}, got {text!r}") from None
        out[key] = value
    return out


def _config_with(base: DecisionConfig, overrides: Mapping[str, Any]) -> DecisionConfig:
    try:
        return base.with_overrides(dict(overrides))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors())
        raise ReplayError(f"invalid decision settings: {problems}") from None
    except ValueError as exc:  # unknown keys
        raise ReplayError(f"{exc}; known: {', '.join(sorted(DecisionConfig.model_fields))}") from None


# --- reports ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplayReport:
    run_id: str  # the original
    replay_run_id: str  # the sandbox run that re-executed it
    debater: str  # "deterministic" or "recorded llm:<model>"
    llm_calls_served: int  # answers served from the recording (network calls made: none)
    nodes: list[NodeComparison]

    @property
    def matched(self) -> bool:
        return all(n.matched for n in self.nodes)

    @property
    def differing_nodes(self) -> list[str]:
        return [n.node for n in self.nodes if not n.matched]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matched": self.matched, "differing_nodes": self.differing_nodes}


@dataclass(frozen=True)
class ForkReport:
    run_id: str  # the original
    fork_run_id: str
    at_node: str
    overrides: dict[str, Any]
    config: dict[str, Any]  # the fork's full DecisionConfig
    debater: str
    llm_calls_served: int
    nodes: list[NodeComparison]  # `rerun=False`: copied from the original, not re-executed
    staged: list[dict[str, Any]]  # the fork's (sandbox) orders: ticker, structure, quantity, limit
    original_staged: list[dict[str, Any]]

    @property
    def differing_nodes(self) -> list[str]:
        return [n.node for n in self.nodes if not n.matched]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "differing_nodes": self.differing_nodes}


def staged_summary(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"ticker": o.ticker, "structure": o.structure, "quantity": o.quantity, "limit_price": str(o.limit_price)}
            for o in state.get("staged", [])]


# --- the original run -------------------------------------------------------------------------------

def _thread(run_id: str) -> dict:
    return {"configurable": {"thread_id": run_id}}


def _app(db: Database):
    return compiled_graph(db.checkpointer)


@dataclass(frozen=True)
class _Original:
    record: RunRecord
    state: dict[str, Any]
    snapshot: MarketSnapshot


async def _load_original(db: Database, run_id: str) -> _Original:
    runs = RunRepository(db.pool)
    record = await runs.get(run_id)
    if record is None:
        raise ReplayError(f"no run {run_id}")
    recorded = await runs.load_snapshot(run_id)
    if recorded is None:
        raise ReplayError(f"run {run_id} recorded no market snapshot (it stopped before load_context finished): "
                          "there is nothing to replay it from")
    state = dict((await _app(db).aget_state(_thread(run_id))).values)
    return _Original(record, state, recorded[0])


async def recorded_debater(db: Database, run_id: str, verdicts: Sequence[Verdict]) -> tuple[Any, RecordedChatBackend | None, str]:
    """The debater that reproduces `run_id`'s debate without a network: its recorded LLM answers
    when it made LLM calls, else the deterministic debater; either is shown the memories the
    original was shown (the memory store has learned since, so recalling again could differ).
    Returns (debater, the recorded backend or None, a label)."""
    calls = await LLMCallRepository(db.pool).for_run(run_id)
    debaters = [d["debater"] for d in await DecisionRepository(db.pool).verdicts(run_id)]
    if calls:
        try:
            debater = make_replay_debater(calls, memory=RecordedMemory(verdicts))
        except ValueError as exc:
            raise ReplayError(f"run {run_id}'s LLM calls cannot be replayed: {exc}") from None
        return debater, debater.backend, f"recorded {debater.name}"
    if any(d.startswith("llm:") or "from llm:" in d for d in debaters):
        raise ReplayError(f"run {run_id} was debated by an LLM but recorded no LLM calls: it cannot be replayed "
                          "without a network")
    if any(v.memories_used for v in verdicts):  # the deterministic judge was shown memories: show them again
        return DeterministicDebater(memory=RecordedMemory(verdicts)), None, DeterministicDebater.name
    return DeterministicDebater(), None, DeterministicDebater.name


def _account(state: Mapping[str, Any]) -> tuple[AccountState, list]:
    """The account and book the original decided with (load_context re-reads the halt switch)."""
    ctx = state.get("context")
    if ctx is not None:
        return ctx.account, list(ctx.positions)
    a = defaults().account
    return AccountState(net_liquidation=a["net_liquidation"], cash=a["cash"], margin_used=a["margin_used"]), []


def fork_predecessor(at_node: str) -> str | None:
    """The node as which a fork's copied state is written (None: fork from the start)."""
    if at_node not in FORKABLE_NODES:
        raise ReplayError(f"cannot fork at {at_node!r}; forkable nodes: {', '.join(FORKABLE_NODES)}")
    if at_node == "load_context":
        return None
    if at_node in ANALYSTS:
        return "load_context"
    builder = build_graph()
    sources = sorted(src for src, dst in builder.edges if dst == at_node)
    if len(sources) != 1:  # the graph's wiring changed: say so rather than fork from a wrong place
        raise ReplayError(f"{at_node} has {len(sources)} static predecessors ({sources}); a fork needs exactly one")
    return sources[0]


async def _checkpoint_before(db: Database, run_id: str, at_node: str):
    async for snapshot in _app(db).aget_state_history(_thread(run_id)):
        if at_node in snapshot.next:
            return snapshot  # the newest such checkpoint: the one the run went on from
    raise ReplayError(f"run {run_id} never reached {at_node}: there is no checkpoint to fork from")


def _tasks_by_send(tasks) -> dict[tuple[str, int], Any]:
    """Analyst tasks keyed by (node, n): the n-th task of that node in the order load_context sent
    them (one per ticker, in the run's ticker order), which is the same in the original and a fork."""
    def sent_at(task) -> tuple[int, ...]:
        return tuple(p for p in task.path if isinstance(p, int))
    out: dict[tuple[str, int], Any] = {}
    for name in ANALYSTS:
        for n, task in enumerate(sorted((t for t in tasks if t.name == name), key=sent_at)):
            out[(name, n)] = task
    return out


def _other_analysts_writes(before, rerun: str, run_id: str) -> dict[tuple[str, int], list[tuple[str, Any]]]:
    """What every analyst task but `rerun`'s wrote in the original (timings left out: the fork
    records only what it ran)."""
    out = {}
    for key, task in _tasks_by_send(before.tasks).items():
        if key[0] == rerun:
            continue
        if task.result is None:
            raise ReplayError(f"run {run_id}'s {key[0]} task #{key[1]} never finished: its result cannot be copied")
        out[key] = [(channel, value) for channel, value in task.result.items() if channel != "node_timings"]
    return out


# --- running a sandbox -------------------------------------------------------------------------------

async def _run_sandbox(
    db: Database, original: _Original, kind: str, config: DecisionConfig, debater: Any, *,
    fork_from: tuple[dict[str, Any], str] | None = None, on_node: Callable[[str, dict], None] | None = None,
    finished_tasks: Mapping[tuple[str, int], list[tuple[str, Any]]] | None = None,
) -> tuple[RunRecord, dict[str, Any]]:
    """Create the sandbox run `<original>~<kind><n>` (first free n), execute it, return its final state.

    `fork_from=(values, as_node)` starts the new thread from `values` written as if `as_node` had
    just run; without it the run starts from the top."""
    runs, app, parent = RunRepository(db.pool), _app(db), original.record
    prefix = f"{parent.run_id}~{kind}"
    first = 1 + sum(1 for child in await runs.children(parent.run_id) if child.startswith(prefix))
    provider = RecordedProvider(original.snapshot, as_of=parent.as_of, tickers=parent.tickers)
    account, positions = _account(original.state)
    for n in count(first):
        run_id = f"{prefix}{n}"
        record = await runs.create_if_absent(
            run_id=run_id, slot_key=parent.slot_key, watchlist=parent.watchlist, as_of=parent.as_of,
            tickers=list(parent.tickers), seed=parent.seed, provider=RECORDED_PROVIDER,
            config=config.model_dump(mode="json"), mode="sandbox", parent_run_id=parent.run_id,
            debater=getattr(debater, "name", "deterministic"),
        )
        if record.status != "pending" or record.parent_run_id != parent.run_id:
            continue  # taken by a concurrent replay or fork
        try:
            async with db.advisory_lock(f"run:{run_id}"):
                record = await runs.get(run_id)
                if record.status != "pending":
                    continue
                thread = _thread(run_id)
                info = record.info()  # mode "sandbox": created so above
                market = MarketCache(db)
                deps = make_deps(db, record, provider, account=account, positions=positions, debater=debater,
                                 market=market, broker=None)
                await runs.mark_started(run_id)
                graph_input: Any = {"run": info}
                if fork_from is not None:
                    values, as_node = fork_from
                    try:
                        # The fork owns its recording too, so it can itself be replayed.
                        await runs.record_snapshot(run_id, original.snapshot)
                        market.remember(run_id, original.snapshot)
                        await app.aupdate_state(thread, {**values, "run": info}, as_node=as_node)
                        if finished_tasks:  # LangGraph runs only the sent tasks that wrote nothing yet
                            await _record_finished(db, app, thread, finished_tasks)
                    except Exception as exc:
                        await runs.mark_finished(run_id, "failed", error=f"{type(exc).__name__}: {exc}"[:4000])
                        raise
                    graph_input = None
                try:
                    final = await _advance(app, runs, graph_input, thread, deps, on_node)
                except RunFailed as failed:
                    if isinstance(failed.cause, ReplayDivergence):
                        raise ReplayError(
                            f"{run_id}: the LLM debate asked for a prompt {parent.run_id} never sent, so the "
                            f"recording cannot answer it ({failed.cause}); fork again with --live-llm to debate "
                            "with the configured LLM (new calls, recorded under the fork)") from failed
                    raise
                return await runs.get(run_id), dict(final)
        except LockBusy:
            continue
    raise AssertionError("unreachable")  # count() never ends


async def _record_finished(db: Database, app, thread: dict, writes: Mapping[tuple[str, int], list]) -> None:
    pending = await app.aget_state(thread)
    tasks = _tasks_by_send(pending.tasks)
    missing = sorted(set(writes) - set(tasks))
    if missing:
        raise ReplayError(f"the fork's fan-out did not send {missing}: the original's analyst tasks cannot be matched")
    for key, task_writes in writes.items():
        await db.checkpointer.aput_writes(pending.config, task_writes, tasks[key].id)


async def replay_run(db: Database, run_id: str, *, on_node: Callable[[str, dict], None] | None = None) -> ReplayReport:
    """Re-execute `run_id` in a sandbox from its recordings and compare every node's output.

    Makes no LLM or network call and touches no broker and no order book."""
    original = await _load_original(db, run_id)
    debater, backend, label = await recorded_debater(db, run_id, original.state.get("verdicts", []))
    config = DecisionConfig.model_validate(original.record.config)
    record, final = await _run_sandbox(db, original, "replay", config, debater, on_node=on_node)
    return ReplayReport(
        run_id=run_id, replay_run_id=record.run_id, debater=label,
        llm_calls_served=backend.served if backend is not None else 0,
        nodes=compare_states(original.state, final, other_label="replay"),
    )


async def fork_run(
    db: Database, run_id: str, at_node: str, overrides: Mapping[str, Any], *, debater: Any = None,
    on_node: Callable[[str, dict], None] | None = None,
) -> ForkReport:
    """Run `run_id` again from the checkpoint before `at_node` with `overrides` applied to its
    recorded `DecisionConfig`, in a sandbox, and compare every node's output with the original.

    Nodes before `at_node` are not re-executed (their output is copied; settings they read have no
    effect). `at_node="load_context"` re-runs everything from the recorded snapshot. `debater`
    defaults to the original's, served from its recording; pass a live one when the changed
    settings change what the LLM debate is asked."""
    as_node = fork_predecessor(at_node)
    original = await _load_original(db, run_id)
    config = _config_with(DecisionConfig.model_validate(original.record.config), overrides)
    backend = None
    if debater is None:
        debater, backend, label = await recorded_debater(db, run_id, original.state.get("verdicts", []))
    else:
        label = getattr(debater, "name", type(debater).__name__)
    fork_from, finished = None, None
    if as_node is not None:
        before = await _checkpoint_before(db, run_id, at_node)
        # node_timings accumulate: the fork records only the nodes it ran itself
        fork_from = ({k: v for k, v in before.values.items() if k != "node_timings"}, as_node)
        if at_node in ANALYSTS:
            finished = _other_analysts_writes(before, at_node, run_id)
    record, final = await _run_sandbox(db, original, "fork", config, debater, fork_from=fork_from, on_node=on_node,
                                       finished_tasks=finished)
    copied = frozenset(COMPARED_NODES[:COMPARED_NODES.index(at_node)])
    if at_node in ANALYSTS:  # the other analysts ran beside it in the original: copied, not re-run
        copied = frozenset({"load_context", *(a for a in ANALYSTS if a != at_node)})
    return ForkReport(
        run_id=run_id, fork_run_id=record.run_id, at_node=at_node, overrides=dict(overrides),
        config=config.model_dump(mode="json"), debater=label,
        llm_calls_served=backend.served if backend is not None else 0,
        nodes=compare_states(original.state, final, other_label="fork", copied=copied),
        staged=staged_summary(final), original_staged=staged_summary(original.state),
    )
