"""A run's whole trace as one file, and replaying it in another database.

The file is a zip (no pickle anywhere):

- `manifest.json`: format and version, the run id, when it was exported, each member's SHA-256;
- `run.json`: the run row (configuration, inputs, status) and the snapshot's metadata and hash;
- `snapshot.npz`: the recorded market snapshot, byte for byte as `storage.snapshots` encoded it;
- `llm_calls.json`: every LLM call (prompt messages, response, status, tokens, attempts);
- `checkpoints.json`: the LangGraph checkpoint rows of the run's thread (msgpack/JSON blobs as
  hex), which is what an import restores so that `runs show --steps` and `replay` work there;
- `steps.json`: for reading: every step of the trace and the full state after it (JSON).

`replay_from_file` imports the run into the database at hand (a run already there is reused) and
replays it node by node from its recorded snapshot and LLM answers (`graph.replay.replay_run`).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from graph.replay import ReplayError, ReplayReport, replay_run
from graph.trace import TraceError, json_safe, steps_with_states
from storage.database import Database
from storage.run_archive import ArchiveError, RunRows, export_rows, import_rows
from storage.snapshots import snapshot_sha256

FORMAT = "hedgegraph-run-trace"
VERSION = 1
MEMBERS = ("run.json", "snapshot.npz", "llm_calls.json", "checkpoints.json", "steps.json")
MAX_MEMBER_BYTES = 2 * 1024**3  # a member claiming more than this is not one of ours


class TraceFileError(ReplayError):
    """A trace file that cannot be written or read (not a zip, not ours, damaged, another version)."""


@dataclass(frozen=True)
class ExportSummary:
    run_id: str
    path: str
    bytes: int
    steps: int
    llm_calls: int
    checkpoints: int


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


async def _steps_with_states(db: Database, run_id: str) -> list[dict[str, Any]]:
    try:
        return [{"trace": step.to_dict(), "state": state} for step, state in await steps_with_states(db, run_id)]
    except TraceError:  # no checkpoints: the run failed before its first step
        return []


async def export_run(db: Database, run_id: str, path: Path | str) -> ExportSummary:
    """Write `run_id`'s trace to `path` (a zip); an existing file is replaced only when complete."""
    path = Path(path)
    try:
        rows = await export_rows(db.pool, run_id)
    except ArchiveError as exc:
        raise TraceFileError(str(exc)) from None
    if rows.snapshot_payload is None:
        raise TraceFileError(f"run {run_id} recorded no market snapshot (it stopped before load_context finished): "
                             "an export could not be replayed")
    members = {
        "run.json": _dumps({"run": rows.run, "snapshot": rows.snapshot}),
        "snapshot.npz": rows.snapshot_payload,
        "llm_calls.json": _dumps(rows.llm_calls),
        "checkpoints.json": _dumps(rows.checkpoints),
        "steps.json": _dumps(json_safe(await _steps_with_states(db, run_id))),
    }
    manifest = {
        "format": FORMAT, "version": VERSION, "run_id": run_id,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    if not path.parent.is_dir():
        raise TraceFileError(f"{path.parent} is not a directory")
    partial = path.with_name(path.name + ".partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", _dumps(manifest))
            for name, data in members.items():
                zf.writestr(name, data)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise TraceFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    steps = json.loads(members["steps.json"])
    return ExportSummary(run_id=run_id, path=str(path), bytes=path.stat().st_size, steps=len(steps),
                         llm_calls=len(rows.llm_calls), checkpoints=len(rows.checkpoints["checkpoints"]))


def read_trace_file(path: Path | str) -> tuple[dict[str, Any], RunRows]:
    """The manifest and the rows of a trace file, every member checked against its hash."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"no file {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "manifest.json" not in names:
                raise TraceFileError(f"{path} is not a hedgegraph trace (no manifest.json)")
            manifest = json.loads(zf.read("manifest.json"))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise TraceFileError(f"{path} is not a hedgegraph trace")
            if manifest.get("version") != VERSION:
                raise TraceFileError(f"{path} is trace format version {manifest.get('version')!r}; "
                                     f"this installation reads version {VERSION}")
            data = {}
            for name in MEMBERS:
                if name not in names:
                    raise TraceFileError(f"{path} lacks {name}")
                if zf.getinfo(name).file_size > MAX_MEMBER_BYTES:
                    raise TraceFileError(f"{path}: {name} is implausibly large")
                data[name] = zf.read(name)
                if hashlib.sha256(data[name]).hexdigest() != manifest.get("sha256", {}).get(name):
                    raise TraceFileError(f"{path}: {name} does not match its hash in the manifest (damaged file)")
    except zipfile.BadZipFile:
        raise TraceFileError(f"{path} is not a zip file (a trace is written by `hedgegraph runs export`)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TraceFileError(f"{path}: its manifest is not JSON") from None
    try:
        run = json.loads(data["run.json"])
        rows = RunRows(run=run["run"], snapshot=run["snapshot"], snapshot_payload=data["snapshot.npz"],
                       llm_calls=json.loads(data["llm_calls.json"]), checkpoints=json.loads(data["checkpoints.json"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceFileError(f"{path}: malformed trace ({type(exc).__name__}: {exc})") from None
    if rows.snapshot is None or snapshot_sha256(rows.snapshot_payload) != rows.snapshot.get("sha256"):
        raise TraceFileError(f"{path}: the market snapshot does not match its recorded hash")
    if rows.run.get("run_id") != manifest.get("run_id"):
        raise TraceFileError(f"{path}: the manifest names {manifest.get('run_id')!r}, the run row another run")
    return manifest, rows


async def import_trace(db: Database, path: Path | str) -> tuple[str, bool]:
    """Import a trace file; returns (run id, False when that very run was already here)."""
    manifest, rows = read_trace_file(path)
    try:
        added = await import_rows(db.pool, rows)
    except ArchiveError as exc:
        raise TraceFileError(str(exc)) from None
    return manifest["run_id"], added


async def replay_from_file(db: Database, path: Path | str, *,
                           on_node: Callable[[str, dict], None] | None = None) -> tuple[ReplayReport, bool]:
    """Import the trace at `path` and replay it; returns (the report, whether the import added it)."""
    run_id, added = await import_trace(db, path)
    return await replay_run(db, run_id, on_node=on_node), added
