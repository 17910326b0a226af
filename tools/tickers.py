"""Which tickers a piece of social text is about.

Three ways a post names a ticker, in decreasing order of trust:
* a cashtag (`$NVDA`): explicit, accepted for any ticker in the universe;
* a bare upper-case word (`NVDA to the moon`): accepted only if it is in the universe and not
  an ordinary word or forum slang that happens to be a ticker ("A", "IT", "ALL", "CEO", "DD",
  "YOLO", "ON", ...) — those count only as cashtags;
* a company name from a small map ("Nvidia", "Apple"), matched as a whole word, any case.

Only tickers of the universe (the run's watchlist) are returned: the analyst has no use for
others, and a closed universe is what makes bare-word matching safe at all.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Upper-case words that are (or could be) tickers but in posts are mostly English, finance
# jargon or forum slang. A cashtag still counts for them.
STOP_WORDS: frozenset[str] = frozenset({
    "A", "I", "AM", "AN", "ARE", "AS", "AT", "BE", "BY", "DO", "GO", "HE", "IF", "IN", "IS", "IT",
    "ME", "MY", "NO", "OF", "OK", "ON", "OR", "SO", "TO", "UP", "US", "WE", "ALL", "AND", "ANY",
    "BIG", "CAN", "FOR", "FUN", "HAS", "NEW", "NOW", "ONE", "OUT", "REAL", "SEE", "THE",
    "TWO", "WELL", "VERY", "BEST", "GOOD", "LOVE", "MOON", "NEXT", "OPEN", "PLAY", "RUN", "SAFE",
    "CEO", "CFO", "CTO", "COO", "IPO", "ATH", "ATM", "OTM", "ITM", "EPS", "PE", "GDP", "CPI",
    "FED", "FOMC", "SEC", "ETF", "IMO", "IMHO", "USA", "USD", "EU", "UK", "AI", "EV", "IRA",
    "DD", "YOLO", "HODL", "FOMO", "FUD", "WSB", "LOL", "TLDR", "EDIT", "PSA", "OP", "RIP",
    "GAIN", "LOSS", "PUMP", "DUMP", "BULL", "BEAR", "CALL", "PUT", "PUTS", "CALLS", "ER",
})

# Company names people write instead of the symbol. Lower-case name -> ticker.
COMPANY_NAMES: Mapping[str, str] = {
    "apple": "AAPL", "microsoft": "MSFT", "nvidia": "NVDA", "amazon": "AMZN", "tesla": "TSLA",
    "jpmorgan": "JPM", "jp morgan": "JPM", "alphabet": "GOOGL", "google": "GOOGL", "meta": "META",
    "facebook": "META", "netflix": "NFLX", "amd": "AMD", "intel": "INTC", "exxon": "XOM",
    "chevron": "CVX", "boeing": "BA", "walmart": "WMT", "berkshire": "BRK.B", "palantir": "PLTR",
    "gamestop": "GME", "coinbase": "COIN", "broadcom": "AVGO", "salesforce": "CRM",
}

_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,5}(?:\.[A-Za-z])?)\b")
_BARE = re.compile(r"(?<![\w$])([A-Z]{1,5}(?:\.[A-Z])?)\b")


def _name_pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(names, key=len, reverse=True)  # "jp morgan" before "jp"
    if not ordered:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(n) for n in ordered) + r")\b", re.IGNORECASE)


class TickerExtractor:
    """Finds the universe's tickers in texts (see the module docstring for the rules)."""

    def __init__(self, universe: Iterable[str], *, company_names: Mapping[str, str] = COMPANY_NAMES,
                 stop_words: Iterable[str] = STOP_WORDS) -> None:
        self.universe = frozenset(t.upper() for t in universe)
        if not self.universe:
            raise ValueError("ticker universe is empty")
        self.stop_words = frozenset(w.upper() for w in stop_words)
        self.names = {n.lower(): t.upper() for n, t in company_names.items() if t.upper() in self.universe}
        self._names = _name_pattern(self.names)

    def extract(self, text: str) -> frozenset[str]:
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}, not str")
        found = {m.upper() for m in _CASHTAG.findall(text)}
        found |= {m for m in _BARE.findall(text) if m not in self.stop_words}
        if self._names is not None:
            found |= {self.names[m.lower()] for m in self._names.findall(text)}
        return frozenset(found & self.universe)
