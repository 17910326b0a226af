"""Strategy selector and leg optimizer: from a verdict to a priced, checked `TradeProposal`.

Two pure functions; the graph node that calls them lives elsewhere.

* `choose_structure` maps (price view, vol view, regime, IV rank) to a structure name.
* `build_proposal` picks the expiry and strikes for that structure from an `OptionChain` and a
  per-row implied-vol array (market IVs, or IVs read off a fitted surface — the caller decides),
  checks liquidity and prices, and fills a `TradeProposal`, or says why it could not.

Conventions of the proposal (see also domain/decision.py)
------------------------------------------------------
* Leg bid/ask/mid are Decimal per share rounded to cents (half-even); `net_debit` is the signed
  sum of leg limits (positive pay, negative credit) and `natural_debit` the same at the far side
  of each quote (pay the ask on buys, receive the bid on sells). A leg's limit is its mid, or,
  against a fitted surface, its value on the fitted smile clipped to [bid, ask] (`fit_value`,
  `limit`, and `edge_vs_fit` = sign * (fit_value - limit) on the leg).
* Against a fitted surface (`build_proposal(..., surface=...)` with the expiry fitted) the
  expiry's vols come from the fit, so strikes are chosen by delta on the fitted smile and Greeks
  are the fit's; a vertical's wing is the listed strike nearest `wing_width_expected_move` x the
  expected move (F x ATM vol x sqrt(t)) beyond its anchor, the next-nearest tried when illiquid.
  Butterflies and the iron fly keep `wing_width_steps` listed strikes (symmetric wings).
* `max_profit` / `max_loss` are dollars per unit (multiplier applied), exact from the expiry
  payoff; `breakevens` are terminal underlying prices.
* Leg Greeks are per share for a LONG option, in trader units (domain.decision): delta per 1.00 of
  spot, gamma per 1.00 of spot squared, vega per vol POINT (tools/pricing's vega / 100), theta
  per calendar DAY (tools/pricing's theta / 365). Proposal Greeks are sign * ratio sums of them.
* `probability_of_profit` is risk-neutral and exact over the breakeven intervals. Given the
  chain's fitted surface and a fitted smile at the expiry, it is under that smile's law
  (tools/density.py: Breeden–Litzenberger on the SVI slice, skew included; `pop_model`
  "svi_density"), with `expected_pnl` (dollars per unit at mid) and the smile itself on the
  proposal; otherwise lognormal with the expiry's ATM implied vol (interpolated at the forward
  from out-of-the-money IVs; "lognormal_atm"). The lognormal ATM figure is always kept in
  `probability_of_profit_lognormal` for comparison.
* A long call's profit is unbounded, which `TradeProposal.max_profit` (a finite Decimal) cannot
  carry: its `max_profit` is the expiry P&L at the +3 standard deviation price
  F * exp(3 * atm_vol * sqrt(t)) (cents), and the proposal's rationale says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np

from config.settings import DecisionConfig
from domain.decision import OptionLeg, SmileFit, TradeProposal
from tools.chain import NEW_YORK, OptionChain, years_to_expiry
from tools.density import SmileDensity, market_distribution, pnl_distribution
from tools.density import probability_of_profit as density_probability_of_profit
from tools.pricing import black76_price, bsm_greeks
from tools.surface import VolSurface
from tools.two_expiry import FarSmile, TwoExpiryModel, numeric_extremes, pnl_at_near_expiry
from tools.two_expiry import probability_of_profit as two_expiry_probability_of_profit
from tools.structures import breakevens, max_profit_loss, net_greeks, probability_of_profit

CENT = Decimal("0.01")

# IV rank is a fraction in [0, 1]. It only decides when the debate's vol view is "neutral".
HIGH_IV_RANK = 0.50
LOW_IV_RANK = 0.25

# Expiries considered: this window, widened if needed so that it always contains target_dte.
DTE_WINDOW = (21, 60)
# A leg chosen by delta must land within this absolute distance of the target |delta|.
DELTA_TOLERANCE = 0.10

# Against a fitted surface, a vertical's wing is the listed strike nearest
# config.wing_width_expected_move x the expected move (F x ATM vol x sqrt(t)) beyond the anchor;
# the next-nearest ones are tried, in order, when a wing is illiquid.
WING_CANDIDATES = 4

# IV rank thresholds of the extreme cells: an iron fly sells more premium than a condor (short
# ATM straddle) and only pays with very rich vol; a naked long option only with very cheap vol.
IRON_FLY_MIN_IV_RANK = 0.75
LONG_OPTION_MAX_IV_RANK = 0.15
# A calendar's or diagonal's far expiry: at least this many days after the near one, nearest the
# near one plus CALENDAR_GAP_DAYS.
CALENDAR_MIN_GAP_DAYS = 14
CALENDAR_GAP_DAYS = 28

# The 30-day ATM vol must exceed the 90-day one by this much (vol, decimal) to call the term
# structure inverted (front rich against the back).
TERM_INVERSION_VOL = 0.02

# A neutral view with a pin expected within this fraction of spot buys a butterfly at the money.
PIN_BAND = 0.02
# A directional view's target (the pin on its side) must be at least this far from spot.
MIN_TARGET_DISTANCE = 0.005
# A 25-delta risk reversal at or below minus this (vol, decimal) is a rich put skew.
RICH_PUT_SKEW = 0.04
# A long call's displayed max profit: its P&L at the forward moved up this many standard deviations.
LONG_CALL_PROFIT_CAP_SD = 3.0

CREDIT_STRUCTURES = ("bull_put_spread", "bear_call_spread", "iron_condor", "iron_fly", "jade_lizard")
DEBIT_STRUCTURES = ("bull_call_spread", "bear_put_spread", "call_butterfly", "put_butterfly",
                    "call_broken_wing_butterfly", "put_broken_wing_butterfly", "long_call", "long_put")
TWO_EXPIRY_STRUCTURES = ("call_calendar", "put_calendar", "call_diagonal", "put_diagonal")
SUPPORTED_STRUCTURES = CREDIT_STRUCTURES + DEBIT_STRUCTURES + TWO_EXPIRY_STRUCTURES
BUTTERFLIES = ("call_butterfly", "put_butterfly")
BROKEN_WINGS = ("call_broken_wing_butterfly", "put_broken_wing_butterfly")
LONG_OPTIONS = ("long_call", "long_put")

_PRICE_VIEWS = ("bullish", "bearish", "neutral", "inconclusive")
_VOL_VIEWS = ("rich", "cheap", "neutral")
_REGIMES = ("low_vol", "neutral", "high_vol", "crisis")


# --------------------------------------------------------------------------- structure choice


@dataclass(frozen=True)
class StructureChoice:
    structure: str | None  # None: no trade for this view
    reason: str


def _vol_stance(vol_view: str, iv_rank: float | None) -> str:
    if vol_view in ("rich", "cheap"):
        return vol_view
    if iv_rank is not None and iv_rank >= HIGH_IV_RANK:
        return "rich"
    if iv_rank is not None and iv_rank <= LOW_IV_RANK:
        return "cheap"
    return "neutral"


def choose_structure_with_reason(
    price_view: str, vol_view: str, regime_name: str, iv_rank: float | None, pin: float | None = None,
    risk_reversal: float | None = None, allow_jade_lizard: bool = False, term_inverted: bool = False,
) -> StructureChoice:
    """`choose_structure` with the one-line reason for the choice (or for choosing nothing)."""
    if price_view not in _PRICE_VIEWS:
        raise ValueError(f"price_view must be one of {_PRICE_VIEWS}, got {price_view!r}")
    if vol_view not in _VOL_VIEWS:
        raise ValueError(f"vol_view must be one of {_VOL_VIEWS}, got {vol_view!r}")
    if regime_name not in _REGIMES:
        raise ValueError(f"regime_name must be one of {_REGIMES}, got {regime_name!r}")
    if iv_rank is not None and not (math.isfinite(iv_rank) and 0.0 <= iv_rank <= 1.0):
        raise ValueError(f"iv_rank is a fraction in [0, 1] (or None), got {iv_rank!r}")
    if pin is not None and not math.isfinite(pin):
        raise ValueError(f"pin is a relative distance from spot (or None), got {pin!r}")

    stance = _vol_stance(vol_view, iv_rank)
    why_vol = f"vol view {vol_view}" + (f", IV rank {iv_rank:.2f}" if iv_rank is not None else "")
    if price_view == "inconclusive":
        return StructureChoice(None, "verdict inconclusive: no trade")
    # Long premium needs the debate to call vol cheap AND the IV rank to confirm it; a low rank
    # alone (vol view "neutral") keeps the defined-risk debit spread.
    very_cheap = vol_view == "cheap" and iv_rank is not None and iv_rank <= LONG_OPTION_MAX_IV_RANK
    target = pin is not None and MIN_TARGET_DISTANCE <= abs(pin) <= PIN_BAND and regime_name != "crisis"
    # An inverted term structure (front vol above back): sell the rich front, own the back.
    calendar = term_inverted and regime_name != "crisis"
    why_term = "term structure inverted (front vol above back)"
    if price_view == "bullish":
        if very_cheap:
            return StructureChoice("long_call", f"bullish and very cheap vol ({why_vol}): buy a call")
        if target and pin > 0:
            return StructureChoice("call_broken_wing_butterfly",
                                   f"bullish with a target {pin:+.1%} from spot (max pain, dealers long gamma): "
                                   "buy a call broken-wing butterfly at the target")
        if calendar:
            return StructureChoice("call_diagonal", f"bullish, {why_term}: buy a call diagonal")
        if stance == "rich":
            if allow_jade_lizard and risk_reversal is not None and risk_reversal <= -RICH_PUT_SKEW:
                return StructureChoice("jade_lizard", f"bullish, rich vol ({why_vol}) and rich put skew (25-delta "
                                                      f"risk reversal {risk_reversal:+.3f}): sell a jade lizard")
            return StructureChoice("bull_put_spread", f"bullish and rich vol ({why_vol}): sell a put spread")
        return StructureChoice("bull_call_spread", f"bullish, vol not rich ({why_vol}): buy a call spread")
    if price_view == "bearish":
        if very_cheap:
            return StructureChoice("long_put", f"bearish and very cheap vol ({why_vol}): buy a put")
        if target and pin < 0:
            return StructureChoice("put_broken_wing_butterfly",
                                   f"bearish with a target {pin:+.1%} from spot (max pain, dealers long gamma): "
                                   "buy a put broken-wing butterfly at the target")
        if calendar:
            return StructureChoice("put_diagonal", f"bearish, {why_term}: buy a put diagonal")
        if stance == "rich":
            return StructureChoice("bear_call_spread", f"bearish and rich vol ({why_vol}): sell a call spread")
        return StructureChoice("bear_put_spread", f"bearish, vol not rich ({why_vol}): buy a put spread")
    # neutral price view: a calendar on an inverted term structure, a short-vol range trade with
    # rich vol, a long butterfly on a pin; never in a crisis.
    if calendar:
        return StructureChoice("call_calendar", f"neutral, {why_term}: buy an at-the-money call calendar")
    if stance != "rich":
        if pin is not None and abs(pin) <= PIN_BAND and regime_name != "crisis":
            fly = "call_butterfly" if pin >= 0 else "put_butterfly"
            return StructureChoice(fly, f"neutral, vol not rich ({why_vol}), dealers long gamma and max pain "
                                        f"{pin:+.1%} from spot: buy a {fly.replace('_', ' ')} for the pin")
        return StructureChoice(None, f"neutral price view without rich vol ({why_vol}): no edge")
    if regime_name == "crisis":
        return StructureChoice(None, "neutral and rich vol, but regime is crisis: no short-vol condor")
    if iv_rank is not None and iv_rank >= IRON_FLY_MIN_IV_RANK and regime_name != "high_vol":
        return StructureChoice("iron_fly", f"neutral and very rich vol ({why_vol}), calm regime: sell an iron fly")
    return StructureChoice("iron_condor", f"neutral and rich vol ({why_vol}): sell an iron condor")


def term_inverted(atm_vol_30d: float | None, atm_vol_90d: float | None) -> bool:
    """The front rich against the back: 30-day ATM vol above the 90-day one by at least
    TERM_INVERSION_VOL (a flat-ish curve's noise is not an inversion)."""
    if atm_vol_30d is None or atm_vol_90d is None:
        return False
    return atm_vol_30d - atm_vol_90d >= TERM_INVERSION_VOL


def expected_pin(flow, spot: float, as_of, target_dte: int) -> float | None:
    """The expected pin's signed distance from spot, (max pain - spot) / spot, of the listed
    expiry nearest `target_dte` days — only while dealers are long gamma (spot above the
    zero-gamma level), when their hedging damps moves toward a pin. None otherwise, or when the
    flow totals (tools.chain_analysis.FlowTotals) lack either number."""
    if flow is None or not (math.isfinite(spot) and spot > 0):
        return None
    zero = float(flow.zero_gamma_level)
    if not math.isfinite(zero) or spot <= zero:
        return None
    today = np.datetime64(as_of.astimezone(NEW_YORK).date(), "D")
    pains = [mp for mp in flow.max_pain if math.isfinite(mp.strike) and np.datetime64(mp.expiry, "D") > today]
    if not pains:
        return None
    nearest = min(pains, key=lambda mp: abs(int((np.datetime64(mp.expiry, "D") - today).astype(int)) - target_dte))
    return (float(nearest.strike) - spot) / spot


def choose_structure(price_view: str, vol_view: str, regime_name: str, iv_rank: float | None,
                     pin: float | None = None, risk_reversal: float | None = None,
                     allow_jade_lizard: bool = False, term_inverted: bool = False) -> str | None:
    """Structure name for a verdict, or None for no trade.

    `iv_rank` is a fraction in [0, 1] or None. The explicit `vol_view` wins; IV rank only turns
    a "neutral" vol view into rich (>= 0.50) or cheap (<= 0.25).

    | price view    | vol rich              | vol cheap              | vol neutral      |
    |---------------|-----------------------|------------------------|------------------|
    | bullish       | bull_put_spread (5)   | bull_call_spread (1)   | bull_call_spread |
    | bearish       | bear_call_spread      | bear_put_spread (1)    | bear_put_spread  |
    | neutral       | iron_condor (2)(3)    | butterfly (4) or None  | butterfly (4) or None |
    | inconclusive  | None                  | None                   | None             |

    (1) long_call / long_put instead when the vol view is explicitly "cheap" AND IV rank
        <= 0.15 (LONG_OPTION_MAX_IV_RANK): premium is cheap enough to own outright. A merely low
        IV rank under a "neutral" vol view keeps the debit spread.
    (2) None when the regime is "crisis" (no short-vol range trade into a crisis).
    (3) iron_fly instead when IV rank >= 0.75 (IRON_FLY_MIN_IV_RANK) and the regime is
        "low_vol" or "neutral": the short ATM straddle collects more premium than the condor's
        OTM shorts, worth its narrower profit zone only when vol is very rich and the market calm.
        (Rich vol here is the stance: explicit "rich", or "neutral" made rich by the rank.)
    (4) call_butterfly (put_butterfly when the pin is below spot) when a pin is expected: `pin`
        is the expected pin's signed distance from spot as a fraction (max pain of the target
        expiry, given only while dealers are long gamma, spot above the zero-gamma level), within
        PIN_BAND (2%); not in a crisis. Otherwise None.
    (5) jade_lizard instead when `allow_jade_lizard` (config: its short put cash-secured) and the
        put skew is rich: 25-delta risk reversal <= -RICH_PUT_SKEW (4 vol points).
    A directional view with a target — a pin between MIN_TARGET_DISTANCE (0.5%) and PIN_BAND from
    spot on the view's side, not in a crisis — buys a broken-wing butterfly at it instead of the
    bullish / bearish cell (after (1)): call_broken_wing_butterfly above spot when bullish,
    put_broken_wing_butterfly below when bearish.
    An inverted term structure (`term_inverted`: the 30-day ATM vol at least 2 vol points above
    the 90-day one, see `term_inverted()`), not in
    a crisis, after (1) and a target: neutral buys an at-the-money call_calendar, bullish a
    call_diagonal, bearish a put_diagonal (short the rich front, long the back).
    Credit spreads sell rich premium; with vol cheap or without a vol edge the direction is
    expressed with a defined-risk debit spread. Unknown view / regime names, an IV rank outside
    [0, 1] or a non-finite pin raise ValueError.
    """
    return choose_structure_with_reason(price_view, vol_view, regime_name, iv_rank, pin, risk_reversal,
                                        allow_jade_lizard, term_inverted).structure


# --------------------------------------------------------------------------- leg optimizer


@dataclass(frozen=True)
class ProposalResult:
    """A proposal, or None with a machine `code` and a human `reason`.

    Codes: unsupported_structure, invalid_chain, no_expiry_in_window, nan_iv,
    no_strike_near_delta, short_strike_itm, no_wing_strike, illiquid_leg, no_credit,
    credit_exceeds_width, no_debit, debit_exceeds_width, bad_analytics.
    """

    proposal: TradeProposal | None
    reason: str | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.proposal is not None


class _Reject(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class _Slice:
    """One right at one expiry: chain row indices sorted by strike (one row per strike)."""

    rows: np.ndarray
    strikes: np.ndarray
    delta: np.ndarray  # BSM delta at the row's IV, NaN where IV is unusable


def _cents(x: float) -> Decimal:
    return Decimal(str(float(x))).quantize(CENT, rounding=ROUND_HALF_EVEN)


def _strike(x: float) -> Decimal:
    """The listed strike as Decimal without float noise or a spurious '.0' (94.0 -> 94, 92.5 -> 92.5)."""
    d = Decimal(str(float(x)))
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


def _dte(chain: OptionChain, expiry: np.datetime64) -> int:
    today = chain.as_of.astimezone(NEW_YORK).date()
    return (np.datetime64(expiry, "D").astype(object) - today).days


def _pick_expiry(chain: OptionChain, target_dte: int, window: tuple[int, int]) -> np.datetime64:
    lo, hi = min(window[0], target_dte), max(window[1], target_dte)
    candidates = [(abs(_dte(chain, e) - target_dte), -_dte(chain, e), e)
                  for e in chain.expiries if lo <= _dte(chain, e) <= hi]
    if not candidates:
        listed = sorted({_dte(chain, e) for e in chain.expiries})
        raise _Reject("no_expiry_in_window", f"no expiry between {lo} and {hi} DTE (listed DTEs: {listed[:12]})")
    # Nearest to target; on a tie the later expiry (less gamma).
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def _slice(chain: OptionChain, iv: np.ndarray, expiry: np.datetime64, t: float, is_call: bool) -> _Slice:
    idx = np.flatnonzero((chain.expiry == expiry) & (chain.is_call == is_call) & np.isfinite(chain.strike))
    # Some chains list a strike twice per expiry (SPX and SPXW on the monthly date): keep the
    # row with the tighter quote, then the larger open interest.
    spread = chain.ask[idx] - chain.bid[idx]
    spread = np.where(np.isfinite(spread), spread, np.inf)
    oi = np.where(np.isfinite(chain.open_interest[idx]), chain.open_interest[idx], -1.0)
    order = np.lexsort((-oi, spread, chain.strike[idx]))
    idx = idx[order]
    strikes = chain.strike[idx]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = strikes[1:] != strikes[:-1]
    idx, strikes = idx[first], strikes[first]
    vol = np.where(iv[idx] > 0, iv[idx], np.nan)
    greeks = bsm_greeks(chain.spot, strikes, t, chain.rate, chain.dividend_yield, vol, is_call)
    return _Slice(idx, strikes, np.asarray(greeks.delta, dtype=float))


def _anchor_candidates(sl: _Slice, target: float, label: str) -> list[int]:
    """Slice positions within DELTA_TOLERANCE of the target |delta|, nearest first."""
    finite = np.isfinite(sl.delta)
    if not finite.any():
        raise _Reject("nan_iv", f"no usable implied vol for any {label} strike")
    distance = np.where(finite, np.abs(np.abs(sl.delta) - target), np.inf)
    order = np.argsort(distance, kind="stable")
    if distance[order[0]] > DELTA_TOLERANCE:
        best = order[0]
        raise _Reject(
            "no_strike_near_delta",
            f"no {label} strike within {DELTA_TOLERANCE} of |delta| {target} "
            f"(closest {sl.strikes[best]:g} at {sl.delta[best]:+.3f})",
        )
    return [int(i) for i in order if distance[i] <= DELTA_TOLERANCE]


def _wing_position(sl: _Slice, anchor: int, is_call: bool, steps: int, anchor_sells: bool, spot: float) -> int:
    """The wing `steps` listed strikes further OTM than the anchor; rejects an ITM short anchor."""
    label = "call" if is_call else "put"
    if anchor_sells and (sl.strikes[anchor] <= spot if is_call else sl.strikes[anchor] >= spot):
        raise _Reject("short_strike_itm", f"short {label} strike {sl.strikes[anchor]:g} is not OTM (spot {spot:g})")
    wing = anchor + steps if is_call else anchor - steps
    if not 0 <= wing < len(sl.strikes):
        raise _Reject("no_wing_strike",
                      f"no {label} strike {steps} steps beyond {sl.strikes[anchor]:g} (edge of the listed strikes)")
    if not np.isfinite(sl.delta[wing]):
        raise _Reject("nan_iv", f"no usable implied vol for the {label} wing at {sl.strikes[wing]:g}")
    return wing


def _wing_candidates(sl: _Slice, anchor: int, is_call: bool, width: float, spot: float,
                     anchor_sells: bool) -> list[int]:
    """Listed strikes further OTM than the anchor, nearest to `width` (price units) away first
    (at most WING_CANDIDATES, each at least one listed step out); rejects an ITM short anchor."""
    label = "call" if is_call else "put"
    if anchor_sells and (sl.strikes[anchor] <= spot if is_call else sl.strikes[anchor] >= spot):
        raise _Reject("short_strike_itm", f"short {label} strike {sl.strikes[anchor]:g} is not OTM (spot {spot:g})")
    beyond = np.arange(anchor + 1, len(sl.strikes)) if is_call else np.arange(anchor - 1, -1, -1)
    beyond = beyond[np.isfinite(sl.delta[beyond])]
    if beyond.size == 0:
        raise _Reject("no_wing_strike", f"no {label} strike with a usable vol beyond {sl.strikes[anchor]:g}")
    distance = np.abs(np.abs(sl.strikes[beyond] - sl.strikes[anchor]) - width)
    return [int(i) for i in beyond[np.argsort(distance, kind="stable")][:WING_CANDIDATES]]


def _require_iv(sl: _Slice, pos: int, label: str, role: str) -> None:
    if not np.isfinite(sl.delta[pos]):
        raise _Reject("nan_iv", f"no usable implied vol for the {label} {role} at {sl.strikes[pos]:g}")


def _offset_position(sl: _Slice, pos: int, offset: int, label: str) -> int:
    """The slice position `offset` listed strikes from `pos` (negative: lower strikes)."""
    wing = pos + offset
    if not 0 <= wing < len(sl.strikes):
        raise _Reject("no_wing_strike",
                      f"no {label} strike {abs(offset)} steps {'above' if offset > 0 else 'below'} "
                      f"{sl.strikes[pos]:g} (edge of the listed strikes)")
    _require_iv(sl, wing, label, "wing")
    return wing


def _liquidity_problem(chain: OptionChain, row: int, side: str, config: DecisionConfig) -> str | None:
    bid, ask, oi = chain.bid[row], chain.ask[row], chain.open_interest[row]
    if not (np.isfinite(bid) and np.isfinite(ask)) or bid < 0 or ask <= 0 or ask < bid:
        return f"no usable quote (bid {bid}, ask {ask})"
    mid = 0.5 * (bid + ask)
    if ask - bid > config.max_spread_pct * mid:
        return f"spread {ask - bid:.2f} is over {config.max_spread_pct:.0%} of mid {mid:.2f}"
    if config.min_open_interest > 0 and not (np.isfinite(oi) and oi >= config.min_open_interest):
        return f"open interest {oi} below {config.min_open_interest:g}"
    if side == "sell" and not bid > 0:
        return "zero bid on a leg we sell"
    return None


VOL_POINTS = 100.0  # vega per 1.00 of vol -> per vol point
DAYS_PER_YEAR = 365.0  # theta per year of calendar time -> per day


@dataclass(frozen=True)
class _Fit:
    """The fitted smile of the chosen expiry: vols per chain row come from it, and each leg is
    valued on it (Black-76 on the slice's parity forward and discount)."""

    forward: float
    discount: float
    t: float

    def value(self, strike: float, vol: float, is_call: bool) -> float:
        rate = -math.log(self.discount) / self.t
        return float(black76_price(self.forward, strike, self.t, rate, vol, is_call))


def _make_leg(chain: OptionChain, iv: np.ndarray, t: float, row: int, side: str,
              config: DecisionConfig, ratio: int = 1, fit: _Fit | None = None) -> OptionLeg:
    right = "C" if chain.is_call[row] else "P"
    problem = _liquidity_problem(chain, row, side, config)
    if problem:
        raise _Reject("illiquid_leg", f"{side} {chain.strike[row]:g}{right}: {problem}")
    vol = float(iv[row])
    g = bsm_greeks(chain.spot, chain.strike[row], t, chain.rate,
                   chain.dividend_yield, vol, bool(chain.is_call[row]))
    bid, ask = _cents(chain.bid[row]), _cents(chain.ask[row])
    oi = chain.open_interest[row]
    priced = {}
    if fit is not None:
        fit_value = _cents(fit.value(float(chain.strike[row]), vol, bool(chain.is_call[row])))
        limit = min(max(fit_value, bid), ask)
        sign = 1 if side == "buy" else -1
        edge = sign * (fit_value - limit)
        priced = {"fit_value": fit_value, "limit": limit, "edge_vs_fit": edge if edge != 0 else Decimal("0.00")}
    return OptionLeg(
        expiry=chain.expiry[row].astype("datetime64[D]").astype(object),
        strike=_strike(chain.strike[row]),
        right=right,
        side=side,
        ratio=ratio,
        bid=bid,
        ask=ask,
        mid=((bid + ask) / 2).quantize(CENT, rounding=ROUND_HALF_EVEN),
        iv=vol,
        delta=float(g.delta), gamma=float(g.gamma),
        vega=float(g.vega) / VOL_POINTS, theta=float(g.theta) / DAYS_PER_YEAR,
        open_interest=float(oi) if np.isfinite(oi) else None,
        **priced,
    )


def _atm_vol(chain: OptionChain, iv: np.ndarray, expiry: np.datetime64, t: float) -> float:
    """ATM IV at the forward, interpolated in strike over out-of-the-money options."""
    rows = np.flatnonzero(chain.expiry == expiry)
    forward = chain.spot * math.exp((chain.rate - chain.dividend_yield) * t)
    k, vol, calls = chain.strike[rows], iv[rows], chain.is_call[rows]
    use = np.isfinite(vol) & (vol > 0) & np.where(calls, k >= forward, k < forward)
    if not use.any():
        return math.nan
    order = np.argsort(k[use])
    return float(np.interp(forward, k[use][order], vol[use][order]))


def _legs_for(structure: str, chain: OptionChain, iv: np.ndarray, expiry: np.datetime64, t: float,
              config: DecisionConfig, fit: _Fit | None = None, wing_width: float | None = None,
              target: float | None = None) -> list[OptionLeg]:
    """Legs of `structure`; with a fitted smile (`fit`), every leg is valued on it and a
    vertical's wing is `wing_width` (price units) away, else `wing_width_steps` listed strikes."""
    steps = config.wing_width_steps

    def make(row: int, side: str, ratio: int = 1) -> OptionLeg:
        return _make_leg(chain, iv, t, row, side, config, ratio, fit)

    def vertical(is_call: bool, anchor_sells: bool) -> list[OptionLeg]:
        """Anchor strikes are tried nearest-delta first; the first with a usable, liquid pair wins.

        When none works the reason reported is the nearest-delta strike's.
        """
        sl = _slice(chain, iv, expiry, t, is_call)
        target = config.short_delta if anchor_sells else config.long_delta
        anchor_side, wing_side = ("sell", "buy") if anchor_sells else ("buy", "sell")
        first_rejection = None
        for anchor in _anchor_candidates(sl, target, "call" if is_call else "put"):
            try:
                wings = ([_wing_position(sl, anchor, is_call, steps, anchor_sells, chain.spot)] if wing_width is None
                         else _wing_candidates(sl, anchor, is_call, wing_width, chain.spot, anchor_sells))
                anchor_leg = make(int(sl.rows[anchor]), anchor_side)
            except _Reject as rejected:
                first_rejection = first_rejection or rejected
                continue
            for wing in wings:
                try:
                    return [anchor_leg, make(int(sl.rows[wing]), wing_side)]
                except _Reject as rejected:
                    first_rejection = first_rejection or rejected
        raise first_rejection

    def long_option(is_call: bool) -> list[OptionLeg]:
        """One long option at |delta| `long_delta`; nearest-delta liquid strike wins, as above."""
        sl = _slice(chain, iv, expiry, t, is_call)
        first_rejection = None
        for anchor in _anchor_candidates(sl, config.long_delta, "call" if is_call else "put"):
            try:
                return [make(int(sl.rows[anchor]), "buy")]
            except _Reject as rejected:
                first_rejection = first_rejection or rejected
        raise first_rejection

    forward = chain.spot * math.exp((chain.rate - chain.dividend_yield) * t)

    def butterfly(is_call: bool) -> list[OptionLeg]:
        """Long 1 / short 2 / long 1 of one right, body at the listed strike nearest the forward."""
        sl = _slice(chain, iv, expiry, t, is_call)
        label = "call" if is_call else "put"
        if len(sl.strikes) == 0:
            raise _Reject("nan_iv", f"no {label} strikes listed at {expiry}")
        body = int(np.argmin(np.abs(sl.strikes - forward)))
        _require_iv(sl, body, label, "body")
        low = _offset_position(sl, body, -steps, label)
        high = _offset_position(sl, body, +steps, label)
        return [make(int(sl.rows[low]), "buy"),
                make(int(sl.rows[body]), "sell", ratio=2),
                make(int(sl.rows[high]), "buy")]

    def broken_wing(is_call: bool) -> list[OptionLeg]:
        """Long 1 / short 2 / long 1 of one right, body at the listed strike nearest `target` (else
        the forward), the wing toward the view `steps` strikes out and the other `2 * steps`: a
        call fly skips a strike below (it keeps paying above the body: bullish), a put fly above
        (bearish). Its loss is the debit, on the side away from the view."""
        sl = _slice(chain, iv, expiry, t, is_call)
        label = "call" if is_call else "put"
        if len(sl.strikes) == 0:
            raise _Reject("nan_iv", f"no {label} strikes listed at {expiry}")
        body = int(np.argmin(np.abs(sl.strikes - (forward if target is None else target))))
        _require_iv(sl, body, label, "body")
        low = _offset_position(sl, body, -2 * steps if is_call else -steps, label)
        high = _offset_position(sl, body, steps if is_call else 2 * steps, label)
        return [make(int(sl.rows[low]), "buy"),
                make(int(sl.rows[body]), "sell", ratio=2),
                make(int(sl.rows[high]), "buy")]

    def jade_lizard() -> list[OptionLeg]:
        """A short put at |delta| `short_delta` plus a bear call spread (short call at the same
        |delta|, long call a wing beyond). The put is uncovered: built only when the configuration
        secures it with cash (`jade_lizard_short_put`), else refused."""
        if config.jade_lizard_short_put != "cash_secured":
            raise _Reject("naked_short_refused",
                          "jade lizard's short put would be uncovered and jade_lizard_short_put is 'refuse'")
        puts = _slice(chain, iv, expiry, t, False)
        first_rejection = None
        for anchor in _anchor_candidates(puts, config.short_delta, "put"):
            try:
                if puts.strikes[anchor] >= chain.spot:
                    raise _Reject("short_strike_itm", f"short put strike {puts.strikes[anchor]:g} is not OTM")
                put = [make(int(puts.rows[anchor]), "sell")]
                break
            except _Reject as rejected:
                first_rejection = first_rejection or rejected
        else:
            raise first_rejection
        calls = vertical(is_call=True, anchor_sells=True)
        return put + calls

    def iron_fly() -> list[OptionLeg]:
        """Short call and put at the common listed strike nearest the forward, long wings out."""
        calls = _slice(chain, iv, expiry, t, True)
        puts = _slice(chain, iv, expiry, t, False)
        common = np.intersect1d(calls.strikes, puts.strikes)
        if len(common) == 0:
            raise _Reject("nan_iv", f"no strike listed with both a call and a put at {expiry}")
        body = common[int(np.argmin(np.abs(common - forward)))]
        c_body = int(np.searchsorted(calls.strikes, body))
        p_body = int(np.searchsorted(puts.strikes, body))
        _require_iv(calls, c_body, "call", "body")
        _require_iv(puts, p_body, "put", "body")
        p_wing = _offset_position(puts, p_body, -steps, "put")
        c_wing = _offset_position(calls, c_body, +steps, "call")
        return [make(int(puts.rows[p_wing]), "buy"),
                make(int(puts.rows[p_body]), "sell"),
                make(int(calls.rows[c_body]), "sell"),
                make(int(calls.rows[c_wing]), "buy")]

    if structure == "long_call":
        legs = long_option(is_call=True)
    elif structure == "long_put":
        legs = long_option(is_call=False)
    elif structure == "call_butterfly":
        legs = butterfly(is_call=True)
    elif structure == "put_butterfly":
        legs = butterfly(is_call=False)
    elif structure == "iron_fly":
        legs = iron_fly()
    elif structure == "call_broken_wing_butterfly":
        legs = broken_wing(is_call=True)
    elif structure == "put_broken_wing_butterfly":
        legs = broken_wing(is_call=False)
    elif structure == "jade_lizard":
        legs = jade_lizard()
    elif structure == "bull_put_spread":
        legs = vertical(is_call=False, anchor_sells=True)
    elif structure == "bear_call_spread":
        legs = vertical(is_call=True, anchor_sells=True)
    elif structure == "bull_call_spread":
        legs = vertical(is_call=True, anchor_sells=False)
    elif structure == "bear_put_spread":
        legs = vertical(is_call=False, anchor_sells=False)
    else:  # iron_condor
        puts = vertical(is_call=False, anchor_sells=True)
        calls = vertical(is_call=True, anchor_sells=True)
        if not puts[0].strike < calls[0].strike:
            raise _Reject("short_strike_itm",
                          f"short put {puts[0].strike} is not below short call {calls[0].strike}")
        legs = puts + calls
    return sorted(legs, key=lambda leg: (leg.strike, leg.right))


def _widest_vertical(legs: list[OptionLeg]) -> Decimal:
    widths = []
    for right in ("C", "P"):
        strikes = [leg.strike for leg in legs if leg.right == right]
        if strikes:
            widths.append(max(strikes) - min(strikes))
    return max(widths)


def _butterfly_width(legs: list[OptionLeg]) -> Decimal:
    """The narrower wing of a 1/2/1 butterfly (legs sorted by strike): the most it can pay."""
    low, body, high = (leg.strike for leg in legs)
    return min(body - low, high - body)


def _check_premium(structure: str, net_debit: Decimal, legs: list[OptionLeg]) -> None:
    if structure == "jade_lizard":
        call_width = _widest_vertical([leg for leg in legs if leg.right == "C"])
        if net_debit >= 0:
            raise _Reject("no_credit", f"jade_lizard would not collect a credit (net debit {net_debit})")
        if -net_debit < call_width:
            raise _Reject("lizard_upside_risk",
                          f"credit {-net_debit} is below the call spread width {call_width}: upside risk")
        return
    if structure in BROKEN_WINGS:
        low, body, high = (leg.strike for leg in legs)
        width = max(body - low, high - body)  # the wide wing: what it pays at the body
        if net_debit <= 0:
            raise _Reject("no_debit", f"{structure} would not cost a debit (net debit {net_debit}): bad quotes")
        if net_debit >= width:
            raise _Reject("debit_exceeds_width", f"debit {net_debit} is not below the width {width}: no profit possible")
        return
    if structure in LONG_OPTIONS:
        if net_debit <= 0:
            raise _Reject("no_debit", f"{structure} would not cost a debit at mid (net debit {net_debit}): bad quotes")
        return
    width = _butterfly_width(legs) if structure in BUTTERFLIES else _widest_vertical(legs)
    if structure in CREDIT_STRUCTURES:
        if net_debit >= 0:
            raise _Reject("no_credit", f"{structure} would not collect a credit at mid (net debit {net_debit})")
        if -net_debit >= width:
            raise _Reject("credit_exceeds_width", f"credit {-net_debit} is not below the width {width}: bad quotes")
    else:
        if net_debit <= 0:
            raise _Reject("no_debit", f"{structure} would not cost a debit at mid (net debit {net_debit}): bad quotes")
        if net_debit >= width:
            raise _Reject("debit_exceeds_width", f"debit {net_debit} is not below the width {width}: no profit possible")


def _capped_long_call_profit(leg: OptionLeg, net_debit: Decimal, chain: OptionChain, t: float,
                             atm_vol: float, multiplier: int) -> tuple[Decimal, Decimal]:
    """(dollars per unit, cap price): a long call's expiry P&L at F * exp(3 * atm_vol * sqrt(t)).

    The true max profit is unbounded; this is the honest finite figure a finite Decimal field can
    carry. The cap price is rounded to cents, so the dollars are exact for that price.
    """
    forward = chain.spot * math.exp((chain.rate - chain.dividend_yield) * t)
    cap_price = _cents(forward * math.exp(LONG_CALL_PROFIT_CAP_SD * atm_vol * math.sqrt(t)))
    profit = (max(cap_price - leg.strike, Decimal(0)) * leg.ratio - net_debit) * multiplier
    if profit <= 0:
        raise _Reject("bad_analytics", f"long call {leg.strike} cannot profit by the +3 SD price {cap_price}")
    return profit, cap_price


def smile_density(surface: VolSurface | None, expiry) -> SmileDensity | None:
    """The risk-neutral law of the surface's fitted smile at `expiry`, or None (no surface, no
    such expiry, or not fitted)."""
    if surface is None:
        return None
    try:
        sl = surface.slice_for(expiry)
    except KeyError:
        return None
    if not sl.fitted or not (sl.t > 0 and sl.forward > 0):
        return None
    try:
        return SmileDensity(sl.params, sl.t, sl.forward)
    except ValueError:
        return None


def _fitted_iv(chain: OptionChain, iv: np.ndarray, expiry, density: SmileDensity) -> np.ndarray:
    """`iv` with the expiry's rows replaced by the fitted smile's vol (where it is finite)."""
    rows = np.flatnonzero(chain.expiry == expiry)
    fitted = density.params.implied_vol(np.log(chain.strike[rows] / density.forward), density.t)
    out = iv.copy()
    out[rows] = np.where(np.isfinite(fitted) & (fitted > 0), fitted, iv[rows])
    return out


def _two_expiry_proposal(structure: str, ticker: str, chain: OptionChain, iv: np.ndarray, config: DecisionConfig,
                         rationale: str, dte_window: tuple[int, int], surface: VolSurface | None,
                         target: float | None, multiplier: int) -> TradeProposal:
    """A calendar (same strike) or diagonal: short the near expiry, long the far one, both
    valued on the fitted surface (tools/two_expiry.py); see `build_proposal`."""
    near = _pick_expiry(chain, config.target_dte, dte_window)
    near_density = smile_density(surface, near)
    if near_density is None:
        raise _Reject("no_fitted_surface", f"{structure} needs a fitted smile at the near expiry {near}")
    near_dte = _dte(chain, near)
    fars = [e for e in chain.expiries if _dte(chain, e) >= near_dte + CALENDAR_MIN_GAP_DAYS
            and smile_density(surface, e) is not None]
    if not fars:
        raise _Reject("no_expiry_in_window", f"no fitted expiry {CALENDAR_MIN_GAP_DAYS}+ days after {near}")
    far = min(fars, key=lambda e: (abs(_dte(chain, e) - near_dte - CALENDAR_GAP_DAYS), _dte(chain, e)))
    far_density = smile_density(surface, far)
    near_sl, far_sl = surface.slice_for(near), surface.slice_for(far)
    iv = _fitted_iv(chain, _fitted_iv(chain, iv, near, near_density), far, far_density)
    t_near = float(years_to_expiry(np.array([near]), chain.as_of)[0])
    t_far = float(years_to_expiry(np.array([far]), chain.as_of)[0])
    fit_near, fit_far = _Fit(near_sl.forward, near_sl.discount, near_sl.t), _Fit(far_sl.forward, far_sl.discount, far_sl.t)
    is_call = structure.startswith("call")
    label = "call" if is_call else "put"
    near_slice = _slice(chain, iv, near, t_near, is_call)
    far_slice = _slice(chain, iv, far, t_far, is_call)
    if structure.endswith("calendar"):
        common = np.intersect1d(near_slice.strikes, far_slice.strikes)
        if common.size == 0:
            raise _Reject("no_strike_near_delta", f"no {label} strike listed at both {near} and {far}")
        aim = near_density.forward if target is None else target
        strike = common[int(np.argmin(np.abs(common - aim)))]
        short_pos = int(np.searchsorted(near_slice.strikes, strike))
        long_pos = int(np.searchsorted(far_slice.strikes, strike))
        _require_iv(near_slice, short_pos, label, "near leg")
        _require_iv(far_slice, long_pos, label, "far leg")
        pairs = [(short_pos, long_pos)]
    else:
        # Diagonal: long the far option at |delta| long_delta, short the near one further OTM at
        # short_delta (so the short is covered with nothing at risk between the strikes).
        longs = _anchor_candidates(far_slice, config.long_delta, label)
        shorts = _anchor_candidates(near_slice, config.short_delta, label)
        pairs = [(sp, lp) for lp in longs for sp in shorts
                 if (near_slice.strikes[sp] > far_slice.strikes[lp] if is_call
                     else near_slice.strikes[sp] < far_slice.strikes[lp])]
        if not pairs:
            raise _Reject("no_strike_near_delta", f"no near {label} strike beyond the far one at the target deltas")
    first_rejection = None
    for short_pos, long_pos in pairs:
        try:
            legs = [_make_leg(chain, iv, t_near, int(near_slice.rows[short_pos]), "sell", config, fit=fit_near),
                    _make_leg(chain, iv, t_far, int(far_slice.rows[long_pos]), "buy", config, fit=fit_far)]
            break
        except _Reject as rejected:
            first_rejection = first_rejection or rejected
    else:
        raise first_rejection
    net_debit = sum((leg.sign * leg.ratio * leg.limit for leg in legs), Decimal(0))
    natural = sum((leg.sign * leg.ratio * (leg.ask if leg.side == "buy" else leg.bid) for leg in legs), Decimal(0))
    if net_debit <= 0:
        raise _Reject("no_debit", f"{structure} would not cost a debit (net debit {net_debit}): bad quotes")

    far_smile = FarSmile(far_density.params, far_sl.t, far_sl.forward, far_sl.discount)
    model = TwoExpiryModel(near_density, near_sl.discount, far_smile)
    extremes = numeric_extremes(legs, net_debit, model)
    if not extremes.max_profit > 0:
        raise _Reject("bad_analytics", f"{structure} cannot profit at the near expiry on the fitted surface")
    pop = two_expiry_probability_of_profit(legs, net_debit, model)
    flat_model = TwoExpiryModel(SmileDensity.flat(near_density.atm_vol, near_sl.t, near_sl.forward), near_sl.discount,
                                FarSmile(SmileDensity.flat(far_density.atm_vol, far_sl.t, far_sl.forward).params,
                                         far_sl.t, far_sl.forward, far_sl.discount))
    pop_lognormal = two_expiry_probability_of_profit(legs, net_debit, flat_model)
    dist = market_distribution(near_density, [float(leg.strike) for leg in legs] + extremes.breakevens)
    expected = float(np.dot(dist.probabilities, pnl_at_near_expiry(legs, net_debit, dist.prices, model)))
    greeks = net_greeks(legs)
    vega_by_expiry: dict[str, float] = {}
    for leg in legs:
        key = leg.expiry.isoformat()
        vega_by_expiry[key] = vega_by_expiry.get(key, 0.0) + leg.sign * leg.ratio * float(leg.vega)
    if not all(math.isfinite(x) for x in (pop, pop_lognormal, expected, greeks.delta, greeks.vega)):
        raise _Reject("bad_analytics", "probability of profit, expected P&L or net Greeks not finite")
    note = (f"{structure}: P&L at the near expiry {near} with the {far} leg valued on the fitted surface "
            "(total variance linear in time at fixed log-moneyness); max profit/loss and breakevens found "
            f"numerically (max profit at {extremes.profit_at:.2f}, max loss at {extremes.loss_at:.2f})")

    def smile_fit(density: SmileDensity, discount: float) -> SmileFit:
        p = density.params
        return SmileFit(a=p.a, b=p.b, rho=p.rho, m=p.m, sigma=p.sigma, t=density.t, forward=density.forward,
                        discount=discount)

    return TradeProposal(
        ticker=ticker, structure=structure, legs=legs, underlying_price=float(chain.spot),
        net_debit=net_debit, natural_debit=natural,
        max_profit=_cents(extremes.max_profit * multiplier), max_loss=_cents(extremes.max_loss * multiplier),
        breakevens=extremes.breakevens, probability_of_profit=pop,
        delta=greeks.delta, gamma=greeks.gamma, vega=greeks.vega, theta=greeks.theta,
        dte=near_dte, multiplier=multiplier,
        rationale=(f"{rationale}; " if rationale else "") + note,
        pop_model="svi_density", probability_of_profit_lognormal=pop_lognormal,
        expected_pnl=_cents(expected * multiplier),
        smile=smile_fit(near_density, near_sl.discount),
        smile_far=smile_fit(far_density, far_sl.discount),
        vega_by_expiry=vega_by_expiry,
    )


def build_proposal(
    structure: str,
    ticker: str,
    chain: OptionChain,
    iv: np.ndarray,
    config: DecisionConfig,
    rationale: str,
    dte_window: tuple[int, int] = DTE_WINDOW,
    surface: VolSurface | None = None,
    target: float | None = None,
) -> ProposalResult:
    """Choose expiry and strikes for `structure`, check them, and price the proposal.

    * Expiry: the listed expiry whose calendar DTE (from `chain.as_of`'s New York date) is
      nearest `config.target_dte` within `dte_window` (widened to contain the target); a tie
      goes to the later expiry. Only that expiry is tried.
    * Strikes: the short leg of a credit spread at |delta| `config.short_delta`, the long leg of
      a debit spread at `config.long_delta` (BSM delta at the row's `iv`, within
      DELTA_TOLERANCE), the other leg `config.wing_width_steps` listed strikes further OTM.
      An iron condor is a bull put spread plus a bear call spread.
    * Every leg: finite quote with ask >= bid, spread <= `max_spread_pct` of mid, open interest
      >= `min_open_interest`, and a positive bid on legs we sell. Anchor strikes within the
      delta tolerance are tried nearest-delta first, so an illiquid strike gives way to the
      next-best liquid one; if none works, the nearest strike's problem is the reason.
    * Iron fly: short call and short put at the listed strike (common to both rights) nearest
      the forward F = spot * exp((rate - div) * t), long put and long call `wing_width_steps`
      listed strikes below / above it.
    * Butterflies (`call_butterfly`, `put_butterfly`): long 1 / short 2 / long 1 of one right;
      the body (ratio 2) at the listed strike nearest F, wings `wing_width_steps` listed strikes
      either side. Only the nearest strike is tried for an ATM body (the next one is not ATM).
    * `long_call` / `long_put`: one bought option at |delta| `config.long_delta`, nearest-delta
      liquid strike first, like a debit spread's anchor.
    * Credit structures need 0 < credit < width (widest vertical); verticals and butterflies
      0 < debit < width (a butterfly's narrower wing); long options a debit > 0.
    * max profit / loss are exact from the expiry payoff, except the unbounded profit of a long
      call: it is reported at the +3 standard deviation price F * exp(3 * atm_vol * sqrt(t))
      (LONG_CALL_PROFIT_CAP_SD) and a note is appended to the rationale. A long put's max
      profit (strike - debit, at S = 0) is exact.

    * Broken-wing butterflies: body at the listed strike nearest `target` (a price, e.g. the
      expected pin; default the forward), wings `wing_width_steps` and twice that either side
      (call: the wide wing below; put: above); 0 < debit < the wide wing.
    * Jade lizard: short put and bear call spread (short strikes at `short_delta`); refused
      unless `config.jade_lizard_short_put` is "cash_secured"; its credit must cover the call
      spread's width (no upside risk), its max loss is the put strike less the credit.

    An iron condor takes its own short delta, wing width and DTE (`DecisionConfig.for_structure`).

    `surface` (the chain's fitted SVI surface, optional): when it has a fitted smile at the chosen
    expiry, probability of profit and expected P&L are under that smile's law (see module doc).

    `iv` holds one implied vol per chain row (decimal), NaN where undefined; a length mismatch
    raises ValueError (a caller bug). Every market-side problem returns a `ProposalResult`
    with `proposal=None`, a `code` and a `reason`.
    """
    iv = np.asarray(iv, dtype=float)
    if iv.shape != (len(chain),):
        raise ValueError(f"iv has shape {iv.shape}, the chain has {len(chain)} rows")
    config = config.for_structure(structure)
    try:
        if structure not in SUPPORTED_STRUCTURES:
            raise _Reject("unsupported_structure", f"{structure!r} is not built yet (supported: {SUPPORTED_STRUCTURES})")
        multiplier = int(chain.multiplier)
        if multiplier != chain.multiplier or multiplier <= 0 or not (math.isfinite(chain.spot) and chain.spot > 0):
            raise _Reject("invalid_chain", f"chain spot {chain.spot} / multiplier {chain.multiplier} unusable")
        if len(chain) == 0:
            raise _Reject("no_expiry_in_window", "the chain is empty")
        if structure in TWO_EXPIRY_STRUCTURES:
            return ProposalResult(_two_expiry_proposal(structure, ticker, chain, iv, config, rationale, dte_window,
                                                       surface, target, multiplier))
        expiry = _pick_expiry(chain, config.target_dte, dte_window)
        t = float(years_to_expiry(np.array([expiry]), chain.as_of)[0])
        density = smile_density(surface, expiry)
        fit = wing_width = None
        if density is not None:
            iv = _fitted_iv(chain, iv, expiry, density)
            sl = surface.slice_for(expiry)
            fit = _Fit(sl.forward, sl.discount, sl.t)
            wing_width = config.wing_width_expected_move * density.forward * density.atm_sd
        legs = _legs_for(structure, chain, iv, expiry, t, config, fit, wing_width, target)

        net_debit = sum((leg.sign * leg.ratio * (leg.mid if leg.limit is None else leg.limit) for leg in legs),
                        Decimal(0))
        natural = sum((leg.sign * leg.ratio * (leg.ask if leg.side == "buy" else leg.bid) for leg in legs), Decimal(0))
        _check_premium(structure, net_debit, legs)

        atm_vol = _atm_vol(chain, iv, expiry, t)
        if not math.isfinite(atm_vol):
            raise _Reject("nan_iv", f"no out-of-the-money implied vol to read the ATM vol of {expiry}")
        extremes = max_profit_loss(legs, net_debit).dollars(multiplier)
        max_profit = extremes.max_profit
        if extremes.profit_unbounded and structure == "long_call":
            max_profit, cap_price = _capped_long_call_profit(legs[0], net_debit, chain, t, atm_vol, multiplier)
            rationale = (f"{rationale}; " if rationale else "") + (
                f"max profit unbounded, shown at the +{LONG_CALL_PROFIT_CAP_SD:g} SD price {cap_price}")
        elif extremes.profit_unbounded or extremes.loss_unbounded:
            raise _Reject("bad_analytics", f"{structure} came out with unbounded profit or loss")
        pop_lognormal = probability_of_profit(legs, net_debit, chain.spot, t, atm_vol, chain.rate, chain.dividend_yield)
        pop, pop_model, expected_pnl, smile = pop_lognormal, "lognormal_atm", None, None
        if density is not None:
            pop = density_probability_of_profit(legs, net_debit, density)
            pop_model = "svi_density"
            expected_pnl = _cents(pnl_distribution(legs, net_debit, density).mean * multiplier)
            p = density.params
            smile = SmileFit(a=p.a, b=p.b, rho=p.rho, m=p.m, sigma=p.sigma, t=density.t, forward=density.forward)
        greeks = net_greeks(legs)
        if not all(math.isfinite(x) for x in (pop, pop_lognormal, greeks.delta, greeks.gamma, greeks.vega, greeks.theta)):
            raise _Reject("bad_analytics", "probability of profit or net Greeks not finite")
        proposal = TradeProposal(
            ticker=ticker,
            structure=structure,
            legs=legs,
            underlying_price=float(chain.spot),
            net_debit=net_debit,
            natural_debit=natural,
            max_profit=max_profit,
            max_loss=extremes.max_loss,
            breakevens=breakevens(legs, net_debit),
            probability_of_profit=pop,
            delta=greeks.delta,
            gamma=greeks.gamma,
            vega=greeks.vega,
            theta=greeks.theta,
            dte=_dte(chain, expiry),
            cash_secured_puts=structure == "jade_lizard",
            multiplier=multiplier,
            rationale=rationale,
            pop_model=pop_model,
            probability_of_profit_lognormal=pop_lognormal,
            expected_pnl=expected_pnl,
            smile=smile,
        )
    except _Reject as rejected:
        return ProposalResult(None, rejected.reason, rejected.code)
    return ProposalResult(proposal)
