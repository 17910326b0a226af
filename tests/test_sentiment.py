"""Finance lexicon sentiment: VADER extended with Loughran-McDonald and market-news terms."""
from __future__ import annotations

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tools.sentiment import (
    LM_VALENCE,
    MARKET_NEWS_TERMS,
    finance_analyzer,
    loughran_mcdonald_words,
    score_texts,
)


@pytest.fixture(scope="module")
def plain_vader():
    return SentimentIntensityAnalyzer()


def test_earnings_beat_is_positive():
    assert score_texts(["the company beat earnings, raised guidance"])[0] > 0


def test_finance_risk_words_are_negative():
    assert score_texts(["impairment, litigation and default risk"])[0] < 0


def test_lm_extension_changes_finance_only_sentence(plain_vader):
    text = "The company recorded an impairment and announced a restatement"
    # plain VADER knows neither word; LM lists both as negative
    assert plain_vader.polarity_scores(text)["compound"] == 0.0
    assert score_texts([text])[0] < -0.3
    stronger = "impairment, litigation and default risk"
    assert score_texts([stronger])[0] < plain_vader.polarity_scores(stronger)["compound"]


def test_lm_positive_words_lift_a_neutral_sentence(plain_vader):
    text = "the merger bolstered margins and led to a breakthrough"
    assert plain_vader.polarity_scores(text)["compound"] == 0.0
    assert score_texts([text])[0] > 0.3


def test_vader_rules_still_apply_negation_and_contrast():
    pos, neg = score_texts(["revenue was profitable", "revenue was not profitable"])
    assert pos > 0 > neg
    mixed = score_texts(["Strong quarter but a large impairment charge"])[0]
    assert mixed < 0  # VADER weights the clause after "but" more


def test_lexicon_merge_rules():
    lexicon = finance_analyzer().lexicon
    plain = SentimentIntensityAnalyzer().lexicon
    positive, negative = loughran_mcdonald_words()
    assert len(positive) > 300 and len(negative) > 2000 and not (positive & negative)
    assert lexicon["impairment"] == -LM_VALENCE and "impairment" not in plain
    assert lexicon["bolstered"] == LM_VALENCE and "bolstered" not in plain
    # a word VADER already rates keeps VADER's human rating
    assert "loss" in negative and lexicon["loss"] == plain["loss"]
    assert "acquitted" in negative and lexicon["acquitted"] == plain["acquitted"] > 0
    for word, valence in MARKET_NEWS_TERMS.items():
        assert lexicon[word] == plain.get(word, valence)
    assert finance_analyzer() is finance_analyzer()  # built once


def test_scores_are_bounded_array_and_bad_input_is_rejected():
    texts = ["", "great great great!!!", "terrible awful bankruptcy fraud default", "neutral words here"]
    out = score_texts(texts)
    assert isinstance(out, np.ndarray) and out.shape == (4,)
    assert out[0] == 0.0
    assert np.all((out >= -1) & (out <= 1))
    assert out[1] > 0.8 and out[2] < -0.8
    assert score_texts([]).shape == (0,)
    with pytest.raises(TypeError, match="sequence"):
        score_texts("a single string")
    with pytest.raises(TypeError, match="not str"):
        score_texts(["ok", None])
