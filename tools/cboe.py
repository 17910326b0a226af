"""Cboe delayed-quote "quote table" CSV importer, and forwards implied by put-call parity.

File layout (as exported from cboe.com delayed quotes):
    line 1: blank (optional)
    line 2: <underlying name>,Last: <spot>,Change: <change>
    line 3: "Date: <Month> <day>[,] <year>[,| at] <h>:<mm> <AM|PM> <EST|EDT>",Bid: ..,Ask: ..,Size: ..,Volume: ..
    line 4: Expiration Date,Calls,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest,Strike,
            Puts,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest
    then one line per (expiry, root, strike): the call's fields on the left, the put's on the right.

The reader returns a tidy OptionChain (one row per expiry/root/strike/right, call row then put
row for each line). Vendor IV/Delta/Gamma of 0 and Last Sale of 0 mean "not given" and become
NaN. `as_of` is the header's timestamp in America/New_York. Index files mix roots (SPX monthly
AM-settled and SPXW weeklies, NDX and NDXP) that can share an expiry and strike; both are kept,
the root is in `chain.root`. The chain's rate and dividend yield are left at 0: the file has
neither; use `implied_forwards` for the carry.

Caveat: the header time is when the table was exported. For the 2022-02-04 files that is
Saturday 20:09, a day after the quotes' Friday close; short-dated vols computed from it are
therefore higher than Cboe's own IV column, which values from the Friday close.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from tools.chain import NEW_YORK, OptionChain, years_to_expiry
from tools.quotes import QuoteProblem, quote_problems

EXPECTED_COLUMNS = (
    "Expiration Date", "Calls", "Last Sale", "Net", "Bid", "Ask", "Volume", "IV", "Delta", "Gamma",
    "Open Interest", "Strike", "Puts", "Last Sale", "Net", "Bid", "Ask", "Volume", "IV", "Delta", "Gamma",
    "Open Interest",
)
# Column positions of each side's fields in a data line.
_CALL = dict(symbol=1, last=2, bid=4, ask=5, volume=6, iv=7, delta=8, gamma=9, open_interest=10)
_PUT = dict(symbol=12, last=13, bid=15, ask=16, volume=17, iv=18, delta=19, gamma=20, open_interest=21)
_STRIKE, _EXPIRY = 11, 0

_LAST_RE = re.compile(r"^\s*Last:\s*([-+0-9.,]+)\s*$")
_DATE_RE = re.compile(
    r"^\s*Date:\s*([A-Za-z]+)\s+(\d{1,2}),?\s+(\d{4}),?\s+(?:at\s+)?(\d{1,2}):(\d{2})\s*([AP]M)\s*(EST|EDT)?\s*$")
_OSI_RE = re.compile(r"^([A-Z][A-Z0-9.]*?)(\d{6})([CP])(\d{8})$")
_ZONE_OFFSETS = {"EST": timezone(timedelta(hours=-5)), "EDT": timezone(timedelta(hours=-4))}


class CboeFormatError(ValueError):
    """A quote-table file that does not have the expected layout; the message names file and line."""

    def __init__(self, path, line: int, problem: str):
        super().__init__(f"{path}:{line}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


def _number(text: str, path, line: int, column: str) -> float:
    cleaned = text.strip().replace(",", "")
    try:
        return float(cleaned)
    except ValueError:
        raise CboeFormatError(path, line, f"{column}: not a number: {text!r}") from None


def _parse_header(rows: list[list[str]], path) -> tuple[str, float, datetime, dict, int]:
    """(name, spot, as_of, extra meta, index of the column-header row) from the file's top lines."""
    index = 0
    while index < len(rows) and not any(cell.strip() for cell in rows[index]):
        index += 1  # leading blank lines
    if index + 2 >= len(rows):
        raise CboeFormatError(path, index + 1, "file ends before the two header lines and the column header")
    name_row, date_row = rows[index], rows[index + 1]
    if len(name_row) < 2 or not _LAST_RE.match(name_row[1]):
        raise CboeFormatError(path, index + 1, f"expected '<name>,Last: <price>,...', got {','.join(name_row)!r}")
    spot = _number(_LAST_RE.match(name_row[1]).group(1), path, index + 1, "Last")
    if not spot > 0:
        raise CboeFormatError(path, index + 1, f"underlying last price must be positive, got {spot}")
    match = _DATE_RE.match(date_row[0]) if date_row else None
    if match is None:
        raise CboeFormatError(path, index + 2, f"expected 'Date: <Month> <d> <yyyy>, <h:mm> <AM|PM> <EST|EDT>', "
                                               f"got {date_row[0] if date_row else ''!r}")
    month, day, year, hour, minute, half, zone = match.groups()
    try:
        naive = datetime.strptime(f"{month} {day} {year} {hour}:{minute} {half}", "%B %d %Y %I:%M %p")
    except ValueError:
        raise CboeFormatError(path, index + 2, f"unreadable date {date_row[0]!r}") from None
    # The stated EST/EDT is taken at its word, then expressed in New York time.
    as_of = (naive.replace(tzinfo=_ZONE_OFFSETS[zone]).astimezone(NEW_YORK) if zone
             else naive.replace(tzinfo=NEW_YORK))
    meta = {"header_name": name_row[0].strip()}
    for cell in date_row[1:]:
        key, _, value = cell.partition(":")
        if key.strip() in ("Bid", "Ask"):
            meta[f"underlying_{key.strip().lower()}"] = _number(value, path, index + 2, key.strip())
    column_row = [cell.strip() for cell in rows[index + 2]]
    if tuple(column_row) != EXPECTED_COLUMNS:
        raise CboeFormatError(path, index + 3, f"unexpected columns {column_row!r}; expected {list(EXPECTED_COLUMNS)!r}")
    return name_row[0].strip(), spot, as_of, meta, index + 2


def _vendor(value: float) -> float:
    return np.nan if value == 0.0 else value


def read_cboe_quote_table(path) -> OptionChain:
    """Read one Cboe quote-table CSV into a tidy OptionChain (source="cboe").

    Prices per share, volume/open interest in contracts, vendor IV a decimal. Raises
    CboeFormatError (a ValueError naming file and line) on a missing or malformed header, wrong
    columns, a short/long line, a bad number, date or option symbol.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    name, spot, as_of, meta, column_index = _parse_header(rows, path)

    expiry, strike, is_call, root = [], [], [], []
    fields = {key: [] for key in ("bid", "ask", "last", "volume", "open_interest", "iv", "delta", "gamma")}
    for offset, row in enumerate(rows[column_index + 1:]):
        line = column_index + 2 + offset  # 1-based line number in the file
        if not any(cell.strip() for cell in row):
            continue  # trailing blank lines
        if len(row) != len(EXPECTED_COLUMNS):
            raise CboeFormatError(path, line, f"expected {len(EXPECTED_COLUMNS)} fields, found {len(row)}")
        try:
            expiry_date = datetime.strptime(row[_EXPIRY].strip(), "%a %b %d %Y").date()
        except ValueError:
            raise CboeFormatError(path, line, f"Expiration Date: unreadable {row[_EXPIRY]!r}") from None
        strike_value = _number(row[_STRIKE], path, line, "Strike")
        for side, columns, call in (("call", _CALL, True), ("put", _PUT, False)):
            symbol = row[columns["symbol"]].strip()
            osi = _OSI_RE.match(symbol)
            if osi is None or osi.group(3) != ("C" if call else "P"):
                raise CboeFormatError(path, line, f"{side} symbol {symbol!r} is not an OSI {side} symbol")
            root.append(osi.group(1))
            expiry.append(expiry_date)
            strike.append(strike_value)
            is_call.append(call)
            for key in fields:
                fields[key].append(_number(row[columns[key]], path, line, f"{side} {key}"))
    if not strike:
        raise CboeFormatError(path, column_index + 2, "no option rows after the column header")

    roots = np.array(root)
    meta.update(file=path.name, roots=sorted(set(root)))
    last = np.array(fields["last"], dtype=float)
    return OptionChain(
        underlying=min(meta["roots"], key=len),  # SPX/SPXW -> SPX, NDX/NDXP -> NDX
        as_of=as_of, spot=spot,
        expiry=np.array(expiry, dtype="datetime64[D]"), strike=np.array(strike, dtype=float),
        is_call=np.array(is_call, dtype=bool), bid=np.array(fields["bid"], dtype=float),
        ask=np.array(fields["ask"], dtype=float), last=np.where(last == 0.0, np.nan, last),
        volume=np.array(fields["volume"], dtype=float),
        open_interest=np.array(fields["open_interest"], dtype=float),
        vendor_iv=np.array([_vendor(v) for v in fields["iv"]]),
        vendor_delta=np.array([_vendor(v) for v in fields["delta"]]),
        vendor_gamma=np.array([_vendor(v) for v in fields["gamma"]]),
        source="cboe", meta=meta | {"underlying_name": name}, root=roots,
    )


# ----------------------------------------------------------------------------- implied forwards

# Pairs nearest the money whose K + (C - P) / D are averaged (by median) into the forward.
FORWARD_PAIRS = 8
# Pairs nearest the money in the discount regression: a wider strike range pins the slope better.
DISCOUNT_PAIRS = 20
# Below this maturity the slope of C - P against K cannot pin the discount factor (quote noise of
# a few cents over a few dozen points of strike is a rate error of whole percents), so the
# discount comes from the longer expiries' implied rates instead.
MIN_YEARS_FOR_RATE = 30.0 / 365.0
# An implied rate outside this range is a symptom of bad (or American-exercise) quotes.
PLAUSIBLE_RATE = (-0.005, 0.15)


@dataclass(frozen=True)
class ForwardCurve:
    """One entry per expiry (sorted): forward F and discount D from C - P = D (F - K)."""

    expiry: np.ndarray  # datetime64[D]
    t: np.ndarray  # years to the 16:00 New York close of the expiry date
    forward: np.ndarray  # per share; NaN when no usable pair (or expired)
    discount: np.ndarray  # D = exp(-rate t)
    rate: np.ndarray  # implied continuously compounded rate, -ln(D)/t
    n_pairs_used: np.ndarray  # int: call/put pairs in the forward's median
    discount_estimated: np.ndarray  # bool: D from this expiry's own regression (else borrowed)

    def forwards_by_expiry(self) -> dict:
        """{np.datetime64 expiry: forward} for expiries with a forward (feeds chain_implied_vol)."""
        return {e: float(f) for e, f in zip(self.expiry, self.forward) if np.isfinite(f)}

    def discounts_by_expiry(self) -> dict:
        return {e: float(d) for e, d in zip(self.expiry, self.discount) if np.isfinite(d)}


def _pairs(chain: OptionChain):
    """Arrays over every (expiry, root, strike) validly quoted on both sides:
    expiry, strike, C - P (mids), and the summed half-spreads (the uncertainty of C - P)."""
    t = chain.time_to_expiry
    ok = quote_problems(chain.bid, chain.ask, chain.strike, t, spot=chain.spot, is_call=chain.is_call) \
        == QuoteProblem.OK
    rows = np.flatnonzero(ok)
    # One key per (expiry, root, strike), numbered in order of its first valid row; the last
    # valid call and the last valid put of each key make its pair.
    codes = [np.unique(a[rows], return_inverse=True)[1].ravel().astype(np.int64)
             for a in (chain.expiry, chain.root if chain.root is not None else np.zeros(len(chain)), chain.strike)]
    _, first, key = np.unique((codes[0] * (codes[1].max(initial=0) + 1) + codes[1]) * (codes[2].max(initial=0) + 1)
                              + codes[2], return_index=True, return_inverse=True)
    call_of, put_of = np.full(len(first), -1), np.full(len(first), -1)
    is_call = chain.is_call[rows]
    np.maximum.at(call_of, key[is_call], rows[is_call])
    np.maximum.at(put_of, key[~is_call], rows[~is_call])
    in_order = np.argsort(first, kind="stable")
    paired = in_order[(call_of[in_order] >= 0) & (put_of[in_order] >= 0)]
    if paired.size == 0:
        empty = np.array([], dtype=float)
        return np.array([], dtype="datetime64[D]"), empty, empty, empty
    calls, puts = call_of[paired], put_of[paired]
    mid, half_spread = chain.mid, 0.5 * (chain.ask - chain.bid)
    return (chain.expiry[calls].astype("datetime64[D]"), chain.strike[calls], mid[calls] - mid[puts],
            half_spread[calls] + half_spread[puts])


def _robust_discount(strike, diff, uncertainty) -> float:
    """-slope of C - P on K: spread-weighted least squares, refitted once without outliers."""
    weight = 1.0 / np.maximum(uncertainty, 1e-4) ** 2
    keep = np.ones(len(strike), dtype=bool)
    for _ in range(2):
        if keep.sum() < 3 or np.ptp(strike[keep]) == 0:
            return np.nan
        slope, intercept = np.polyfit(strike[keep], diff[keep], 1, w=np.sqrt(weight[keep]))
        residual = diff - (slope * strike + intercept)
        # A pair is an outlier when it misses the line by far more than its own quoted width.
        keep = np.abs(residual) <= 3.0 * np.maximum(uncertainty, np.median(np.abs(residual[keep])))
    return -float(slope)


def implied_forwards(chain: OptionChain, n_pairs: int = FORWARD_PAIRS) -> ForwardCurve:
    """Forward and discount per expiry from put-call parity on the strikes nearest the money.

    Per expiry: the DISCOUNT_PAIRS pairs (both sides validly quoted) nearest the strike where C - P
    changes sign give D as minus the slope of C - P against K (least squares weighted by the
    quotes' widths, refitted without outliers); then F = median(K + (C - P) / D) over the
    `n_pairs` nearest pairs. For expiries shorter than MIN_YEARS_FOR_RATE, or when the slope
    implies a rate outside PLAUSIBLE_RATE, D uses the median rate of the expiries that did
    estimate one (the chain's own rate if none did). For American options (SPY) parity is only
    approximate: the forwards are good near the money, the implied rates are not reliable.
    """
    expiries = np.unique(chain.expiry.astype("datetime64[D]"))
    t = years_to_expiry(expiries, chain.as_of)
    pair_expiry, pair_strike, pair_diff, pair_uncertainty = _pairs(chain)
    n = len(expiries)
    forward, discount = np.full(n, np.nan), np.full(n, np.nan)
    used = np.zeros(n, dtype=int)
    estimated = np.zeros(n, dtype=bool)
    chosen = []
    for k, e in enumerate(expiries):
        sel = pair_expiry == e
        if t[k] <= 0 or not sel.any():
            chosen.append(None)
            continue
        strikes, diff, uncertainty = pair_strike[sel], pair_diff[sel], pair_uncertainty[sel]
        atm = strikes[np.argmin(np.abs(diff))]
        order = np.argsort(np.abs(strikes - atm), kind="stable")
        near = order[:n_pairs]
        chosen.append((strikes[near], diff[near]))
        used[k] = len(near)
        if t[k] >= MIN_YEARS_FOR_RATE:
            wide = order[:DISCOUNT_PAIRS]
            d = _robust_discount(strikes[wide], diff[wide], uncertainty[wide])
            if d > 0 and PLAUSIBLE_RATE[0] <= -np.log(d) / t[k] <= PLAUSIBLE_RATE[1]:
                discount[k], estimated[k] = d, True
    estimated_rates = -np.log(discount[estimated]) / t[estimated]
    fallback_rate = float(np.median(estimated_rates)) if estimated.any() else chain.rate
    for k, pick in enumerate(chosen):
        if pick is None:
            continue
        if not estimated[k]:
            discount[k] = np.exp(-fallback_rate * t[k])
        strikes, diff = pick
        forward[k] = float(np.median(strikes + diff / discount[k]))
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(t > 0, -np.log(discount) / t, np.nan)
    return ForwardCurve(expiry=expiries, t=t, forward=forward, discount=discount, rate=rate,
                        n_pairs_used=used, discount_estimated=estimated)
