"""Batches of texts for the text models (FinBERT sentiment, MiniLM embeddings)."""
from __future__ import annotations

from collections.abc import Sequence


def text_list(texts: Sequence[str], method: str) -> list[str]:
    """`texts` as a list of str; a bare string (a sequence of characters) or a non-str item is refused."""
    if isinstance(texts, str):
        raise TypeError(f"{method}() takes a sequence of texts, not a single string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return texts
