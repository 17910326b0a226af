"""Any two runs compared: their inputs, then node by node what each wrote (`hedgegraph runs diff`).

Two runs of one slot with and without the LLM, a run and its fork, two days of one watchlist: the
inputs that differ (as-of, tickers, seed, provider, debater, each decision setting) come first,
then every compared node (signals, verdicts with their transcripts, risk decisions, proposals,
sizes, staged orders) with all of its differences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graph.compare import compare_states, detailed_differences
from graph.graph import compiled_graph
from storage.database import Database
from storage.runs import RunRecord, RunRepository

# The inputs of a run worth showing side by side (ids and timestamps differ by construction).
RUN_FIELDS = ("watchlist", "as_of", "tickers", "seed", "provider", "debater", "mode", "status", "parent_run_id")


class RunDiffError(ValueError):
    pass


@dataclass(frozen=True)
class RunDiff:
    a: RunRecord
    b: RunRecord
    inputs: list[dict[str, Any]]  # {"field", "a", "b"} for each run field that differs
    config: list[dict[str, Any]]  # every decision setting that differs, in full
    nodes: list  # NodeComparison, "original" = a, "other" = b

    @property
    def differing_nodes(self) -> list[str]:
        return [n.node for n in self.nodes if not n.matched]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.run_id, "b": self.b.run_id, "inputs": self.inputs, "config": self.config,
            "nodes": [n.to_dict() for n in self.nodes], "differing_nodes": self.differing_nodes,
            "matched": not self.differing_nodes,
        }


async def diff_runs(db: Database, a_id: str, b_id: str) -> RunDiff:
    runs = RunRepository(db.pool)
    records = []
    for run_id in (a_id, b_id):
        record = await runs.get(run_id)
        if record is None:
            raise RunDiffError(f"no run {run_id}")
        records.append(record)
    a, b = records
    app = compiled_graph(db.checkpointer)
    states = [dict((await app.aget_state({"configurable": {"thread_id": r.run_id}})).values) for r in records]
    inputs = [{"field": name, "a": getattr(a, name), "b": getattr(b, name)}
              for name in RUN_FIELDS if getattr(a, name) != getattr(b, name)]
    config = [{"setting": d["path"], "a": d.get("original"), "b": d.get("other")}
              for d in detailed_differences(a.config, b.config)]
    return RunDiff(a, b, inputs, config, compare_states(states[0], states[1], other_label=b.run_id))
