"""Recording a run's market inputs: a `MarketSnapshot` to bytes and back, exactly.

Arrays go into a compressed `.npz`, byte for byte the same for the same inputs, (no pickle: loading never executes code); everything else is
JSON with tagged datetimes, tuples and the known dataclasses. The SHA-256 of the payload names the
snapshot, so a replay can prove it saw the same inputs.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections import OrderedDict
from dataclasses import fields, is_dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

from tools.chain import OptionChain
from tools.providers.base import Bars, MarketSnapshot, SocialFeed, SocialPost, TickerData

_TYPES = {cls.__name__: cls for cls in (Bars, SocialPost, SocialFeed, TickerData, MarketSnapshot, OptionChain)}


_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can carry


class SnapshotCodecError(ValueError):
    pass


# The encodings of the last few snapshots, by identity (a snapshot is immutable; each entry holds
# its snapshot, so a reused id never matches). A market that shares one snapshot object per instant
# (the simulated one) lets a backtest encode the next run's snapshot in a worker thread, ahead of
# the run that records it. Encoding takes ~50 ms for 20 tickers, most of it deflating the arrays.
_ENCODED: OrderedDict[int, tuple[MarketSnapshot, bytes]] = OrderedDict()
_ENCODED_KEPT = 4
_encoded_lock = threading.Lock()


def encode_snapshot(snapshot: MarketSnapshot) -> bytes:
    """The snapshot's recording (see the module docstring); the same object is encoded once."""
    with _encoded_lock:
        hit = _ENCODED.get(id(snapshot))
        if hit is not None and hit[0] is snapshot:
            _ENCODED.move_to_end(id(snapshot))
            return hit[1]
    payload = _encode(snapshot)
    with _encoded_lock:
        _ENCODED[id(snapshot)] = (snapshot, payload)
        while len(_ENCODED) > _ENCODED_KEPT:
            _ENCODED.popitem(last=False)
    return payload


def _encode(snapshot: MarketSnapshot) -> bytes:
    arrays: dict[str, np.ndarray] = {}

    def enc(obj: Any) -> Any:
        if is_dataclass(obj) and not isinstance(obj, type):
            name = type(obj).__name__
            if name not in _TYPES:
                raise SnapshotCodecError(f"cannot record a {name}")
            return {"__dc__": name, "f": {f.name: enc(getattr(obj, f.name)) for f in fields(obj)}}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise SnapshotCodecError("object arrays cannot be recorded")
            key = f"a{len(arrays)}"
            arrays[key] = obj
            return {"__nd__": key}
        if isinstance(obj, datetime):
            return {"__dt__": obj.isoformat()}
        if isinstance(obj, date):
            return {"__d__": obj.isoformat()}
        if isinstance(obj, tuple):
            return {"__tuple__": [enc(v) for v in obj]}
        if isinstance(obj, list):
            return [enc(v) for v in obj]
        if isinstance(obj, dict):
            return {"__map__": [[enc(k), enc(v)] for k, v in obj.items()]}
        if isinstance(obj, np.generic):
            return obj.item()
        if obj is None or isinstance(obj, (str, int, float, bool)):
            return obj
        raise SnapshotCodecError(f"cannot record a value of type {type(obj).__name__}")

    meta = json.dumps(enc(snapshot), separators=(",", ":")).encode()
    return _npz({"__meta__": np.frombuffer(meta, dtype=np.uint8), **arrays})


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an `.npz` (what `np.load` reads) of `arrays`, the same bytes for the same arrays.

    Written here rather than by `np.savez_compressed`, which stamps each member with the current
    time (so one input had many digests) and deflates at level 6: level 1 is several times faster
    on these float arrays for a slightly larger payload, and every run records one snapshot."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.asanyarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), npy.getbuffer(),
                             compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    return buffer.getvalue()


def decode_snapshot(payload: bytes) -> MarketSnapshot:
    try:
        archive = np.load(io.BytesIO(payload), allow_pickle=False)
        tree = json.loads(archive["__meta__"].tobytes())
    except (ValueError, OSError, KeyError) as exc:
        raise SnapshotCodecError(f"not a recorded snapshot: {exc}") from exc

    def dec(obj: Any) -> Any:
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        if isinstance(obj, dict):
            if "__nd__" in obj:
                return archive[obj["__nd__"]]
            if "__dt__" in obj:
                return datetime.fromisoformat(obj["__dt__"])
            if "__d__" in obj:
                return date.fromisoformat(obj["__d__"])
            if "__tuple__" in obj:
                return tuple(dec(v) for v in obj["__tuple__"])
            if "__map__" in obj:
                return {dec(k): dec(v) for k, v in obj["__map__"]}
            if "__dc__" in obj:
                cls = _TYPES.get(obj["__dc__"])
                if cls is None:
                    raise SnapshotCodecError(f"unknown recorded type {obj['__dc__']}")
                return cls(**{k: dec(v) for k, v in obj["f"].items()})
            raise SnapshotCodecError(f"unexpected mapping in recording: {sorted(obj)[:3]}")
        return obj

    snapshot = dec(tree)
    if not isinstance(snapshot, MarketSnapshot):
        raise SnapshotCodecError("recording does not hold a market snapshot")
    return snapshot


def snapshot_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
