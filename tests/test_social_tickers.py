"""Ticker extraction: cashtags, bare tickers with a stop-list, company names; false positives."""
import pytest

from tools.tickers import TickerExtractor

UNIVERSE = ["SPY", "AAPL", "NVDA", "TSLA", "JPM", "A", "IT", "ALL", "DD", "ON", "BRK.B"]


@pytest.fixture(scope="module")
def extract():
    return TickerExtractor(UNIVERSE, company_names={"nvidia": "NVDA", "apple": "AAPL", "jp morgan": "JPM",
                                                     "berkshire": "BRK.B", "microsoft": "MSFT"}).extract


def test_cashtags_bare_tickers_and_names(extract):
    assert extract("$NVDA calls printing") == {"NVDA"}
    assert extract("$nvda lowercase cashtag") == {"NVDA"}
    assert extract("TSLA and AAPL both red today") == {"TSLA", "AAPL"}
    assert extract("Nvidia and apple report next week") == {"NVDA", "AAPL"}
    assert extract("JP Morgan upgraded") == {"JPM"}
    assert extract("$BRK.B is boring") == {"BRK.B"}


@pytest.mark.parametrize("text", [
    "A quick question about options",
    "IT is going to be a long day",
    "ALL in on this one",
    "The CEO said nothing",
    "DD inside, YOLO",
    "ON second thought",
    "I think the FED is done",
])
def test_common_words_and_slang_are_not_tickers(extract, text):
    assert extract(text) == frozenset()


def test_stop_words_still_count_as_cashtags(extract):
    assert extract("bought $ALL and $A today") == {"ALL", "A"}
    assert extract("$IT beat") == {"IT"}


def test_only_the_universe_and_whole_words(extract):
    assert extract("$GME MSFT microsoft") == frozenset()  # not in the universe (MSFT is named but absent)
    assert extract("NVDAX and SPYDER and applesauce") == frozenset()
    assert extract("price$NVDA") == frozenset()  # a cashtag starts a word
    assert extract("spy is lower-case, SPY is not") == {"SPY"}


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        TickerExtractor([])
    with pytest.raises(TypeError):
        TickerExtractor(["SPY"]).extract(None)
