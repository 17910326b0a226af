"""FinBERT sentiment: a sequence-classification model with positive / negative / neutral labels,
loaded from local files only and run in batches on the CPU.

The model is a directory or a hub id already in the local Hugging Face cache (e.g.
`ProsusAI/finbert` fetched once by an operator); nothing is downloaded at run time — the hub's
offline switches are set before `transformers` is imported, and `local_files_only=True` is
passed to every loader. A missing model is a `FinBertError` naming what was asked for.

A text's score is P(positive) - P(negative), in [-1, 1], the same scale as the lexicon's
compound score it replaces.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from tools.text_batch import text_list

DEFAULT_MAX_TOKENS = 128  # posts and headlines; FinBERT was fine-tuned on sentences


class FinBertError(RuntimeError):
    """The configured FinBERT model cannot be loaded or does not have sentiment labels."""


_cache: dict[str, "FinBertScorer"] = {}
_cache_lock = threading.Lock()


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class FinBertScorer:
    """Batched CPU sentiment from a local sequence-classification model."""

    def __init__(self, model: str, *, batch_size: int = 16, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        if not model or not model.strip():
            raise FinBertError("no FinBERT model configured")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_name = model
        self.batch_size = batch_size
        _offline()
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        location = os.path.expanduser(model)
        # A path that is not a directory would otherwise be read as a hub id.
        if model.startswith((".", "/", "~")) and not os.path.isdir(location):
            raise FinBertError(f"FinBERT model directory not found: {model}")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
            self._model = AutoModelForSequenceClassification.from_pretrained(location, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FinBertError(f"FinBERT model '{model}' is not available locally "
                               f"(a directory, or a hub id already in the local cache): {exc}") from exc
        self._model.eval()
        self._model.to(torch.device("cpu"))
        labels = {int(i): str(name).lower() for i, name in self._model.config.id2label.items()}
        index = {name: i for i, name in labels.items()}
        if "positive" not in index or "negative" not in index:
            raise FinBertError(f"model '{model}' has labels {sorted(labels.values())}, need positive and negative")
        self._positive, self._negative = index["positive"], index["negative"]
        ceiling = int(getattr(self._model.config, "max_position_embeddings", max_tokens))
        self.max_tokens = max(2, min(max_tokens, ceiling))

    @classmethod
    def shared(cls, model: str, *, batch_size: int = 16) -> "FinBertScorer":
        """One loaded model per process and name (loading is the slow part)."""
        with _cache_lock:
            key = f"{model}|{batch_size}"
            if key not in _cache:
                _cache[key] = cls(model, batch_size=batch_size)
            return _cache[key]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive) - P(negative) per text, float64, in input order."""
        texts = text_list(texts, "score")
        out = np.empty(len(texts))
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            out[start:start + len(batch)] = self._score_batch(batch)
        return out

    def _score_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        encoded: Any = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                       return_tensors="pt")
        with torch.inference_mode():
            probs = torch.softmax(self._model(**encoded).logits.to(torch.float32), dim=-1).numpy()
        return probs[:, self._positive] - probs[:, self._negative]
