"""FinBERT loading and batched CPU inference on a tiny BERT classifier built and saved here, loaded
through the same `from_pretrained(path, local_files_only=True)` path as a real model."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.finbert import FinBertError, FinBertScorer

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "nvda", "beats", "misses", "earnings", "rally",
         "lawsuit", "the", "stock", "is", "flat", "today"]


def build_tiny_classifier(directory: Path, labels: dict[int, str], bias: list[float] | None = None) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=len(labels),
                        id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    if bias is not None:
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_classifier(tmp_path_factory.mktemp("finbert"), {0: "positive", 1: "negative", 2: "neutral"})


TEXTS = ["NVDA beats earnings", "the stock is flat today", "lawsuit", "NVDA misses earnings, the rally is over",
         "", "unknownword only"]


def _reference(directory: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True).eval()
    out = []
    for text in texts:  # one at a time, no padding
        with torch.no_grad():
            p = torch.softmax(model(**tok([text], return_tensors="pt")).logits, -1)[0]
        out.append(float(p[0] - p[1]))
    return np.array(out)


def test_batched_scores_match_one_by_one_probabilities(tiny):
    scorer = FinBertScorer(str(tiny), batch_size=4)
    scores = scorer.score(TEXTS)
    assert scores.shape == (len(TEXTS),) and np.all(np.abs(scores) <= 1)
    np.testing.assert_allclose(scores, _reference(tiny, TEXTS), atol=1e-5)
    np.testing.assert_allclose(FinBertScorer(str(tiny), batch_size=1).score(TEXTS), scores, atol=1e-5)
    assert scorer.score([]).shape == (0,)


def test_label_order_comes_from_the_model_config(tmp_path):
    # positive is label 2 here, and its bias dominates: every text scores near +1
    path = build_tiny_classifier(tmp_path / "m", {0: "negative", 1: "neutral", 2: "positive"}, bias=[0.0, 0.0, 8.0])
    assert (FinBertScorer(str(path)).score(TEXTS) > 0.99).all()
    path = build_tiny_classifier(tmp_path / "n", {0: "Negative", 1: "neutral", 2: "Positive"}, bias=[8.0, 0.0, 0.0])
    assert (FinBertScorer(str(path)).score(TEXTS) < -0.99).all()


def test_missing_or_unsuitable_model_is_a_clear_error(tmp_path):
    with pytest.raises(FinBertError, match="directory not found"):
        FinBertScorer(str(tmp_path / "nowhere"))
    with pytest.raises(FinBertError, match="not available locally"):
        FinBertScorer("no-such-org/no-such-finbert")  # a hub id not in the cache: never downloaded
    with pytest.raises(FinBertError, match="not available locally"):
        FinBertScorer(str(tmp_path))  # an empty directory
    wrong = build_tiny_classifier(tmp_path / "w", {0: "spam", 1: "ham"})
    with pytest.raises(FinBertError, match="need positive and negative"):
        FinBertScorer(str(wrong))
    with pytest.raises(FinBertError, match="no FinBERT model"):
        FinBertScorer(" ")


def test_bad_input(tiny):
    scorer = FinBertScorer(str(tiny))
    with pytest.raises(TypeError, match="single string"):
        scorer.score("NVDA beats")
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        scorer.score(["ok", 3])
