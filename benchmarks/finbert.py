"""FinBERT throughput: texts scored per second on the CPU through `tools.finbert.FinBertScorer`.

Run: .venv/bin/python benchmarks/finbert.py [--texts N]
The last line is machine-readable key=value pairs:
    tiny_texts_per_s=... base_texts_per_s=... batch_size=... threads=...

No weights are downloaded: both models are built here with random weights and saved to a temp
directory, then loaded through the same `from_pretrained(path, local_files_only=True)` path as a
real model. Throughput does not depend on the weights' values, only on the shape:
* tiny: 1 layer, hidden 32 (the test model's size) — the overhead floor of tokenizing and batching;
* base: 12 layers, hidden 768, 12 heads — the shape of ProsusAI/finbert (BERT-base), so this is
  what a configured FinBERT costs per post.
Texts are synthetic Reddit-length posts (20–40 words); best of 3 timed passes after a warm-up.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from tools.finbert import FinBertScorer

WORDS = ("nvda tsla aapl beats misses earnings guidance rally plunge calls puts squeeze short long "
         "revenue margin outlook upgrade downgrade lawsuit merger fed rates inflation moon yolo "
         "buy sell hold the a is was to of and on in for with today tomorrow week price target").split()
LABELS = {0: "positive", 1: "negative", 2: "neutral"}


def build(directory: Path, *, layers: int, hidden: int, heads: int, vocab_size: int | None) -> str:
    directory.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    config = BertConfig(vocab_size=vocab_size or len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=512,
                        num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    return str(directory)


def texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 41)))) for _ in range(n)]


def throughput(model: str, sample: list[str], batch_size: int) -> float:
    scorer = FinBertScorer(model, batch_size=batch_size)
    scorer.score(sample[:batch_size])  # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        scorer.score(sample)
        best = min(best, time.perf_counter() - start)
    return len(sample) / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    sample = texts(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build(Path(tmp) / "tiny", layers=1, hidden=32, heads=2, vocab_size=None)
        base = build(Path(tmp) / "base", layers=12, hidden=768, heads=12, vocab_size=30522)
        tiny_rate = throughput(tiny, sample, args.batch_size)
        base_rate = throughput(base, sample, args.batch_size)
    print(f"tiny model (1x32): {tiny_rate:,.0f} texts/s; BERT-base shape (12x768, as ProsusAI/finbert): "
          f"{base_rate:,.1f} texts/s; {args.texts} texts, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"tiny_texts_per_s={tiny_rate:.0f} base_texts_per_s={base_rate:.1f} batch_size={args.batch_size} "
          f"threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
