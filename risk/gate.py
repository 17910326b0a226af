"""The risk engine: one gate used before a structure is chosen (`pre_trade`) and after sizing
(`post_trade`). Deterministic, no I/O beyond the packaged exchange calendar; every veto or
warning is a `RiskReason` with a code, a message, the limit and the value.

Conventions
- Exposure of a position or trade is its max loss in dollars (contracts * max loss per unit);
  the margin of a defined-risk structure is its max loss.
- Fractions are of net liquidation value (NLV); `RiskReason.limit`/`value` carry fractions of NLV
  for money limits, counts for contract/trade counts, minutes for the cooldown, and for yes/no
  rules value=1 (the condition holds) against limit=0 (allowed).
- Hard limits (risk/limits.py) give `hard=True` reasons and always veto, except the > 10
  contracts rule which sets `requires_acknowledgement` and records a hard warning.
- Soft limits (config/risk_matrix.yaml) veto or warn as the matrix says. A soft limit that is
  already exceeded and that the trade does not make worse gives a warning, not a veto, so
  risk-reducing trades stay possible.
- Account data that cannot be evaluated (NaN, non-positive NLV) fails closed: a hard veto.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import ArrayLike

from domain.decision import AccountState, OptionLeg, Position, Regime, RiskDecision, RiskReason, SizedTrade
from risk.limits import HARD_LIMITS, RiskMatrix, SessionHours, SoftLimit
from risk.var import delta_gamma_normal_var

MIN_RETURNS_FOR_CORRELATION = 20


# --------------------------------------------------------------------------- helpers


def _frac(amount: Decimal, nlv: Decimal) -> float:
    return float(amount / nlv)


def _flag(code: str, message: str, hard: bool) -> RiskReason:
    return RiskReason(code=code, message=message, hard=hard, limit=0.0, value=1.0)


def _money(amount: Decimal) -> str:
    return f"${amount:,.2f}"


def _account_problem(account: AccountState) -> str | None:
    for name in ("net_liquidation", "cash", "margin_used", "daily_realized_pnl", "daily_unrealized_pnl"):
        if not getattr(account, name).is_finite():
            return f"account {name} is {getattr(account, name)}"
    if account.net_liquidation <= 0:
        return f"net liquidation {_money(account.net_liquidation)} is not positive"
    if account.margin_used < 0:
        return f"margin used {_money(account.margin_used)} is negative"
    return None


def _position_problem(position: Position) -> str | None:
    if not position.max_loss.is_finite() or position.max_loss < 0:
        return f"position {position.ticker} {position.structure} has max loss {position.max_loss}"
    return None


def daily_loss_fraction(account: AccountState) -> float:
    """Today's loss (realized + unrealized, positive = loss) as a fraction of NLV."""
    loss = -(account.daily_realized_pnl + account.daily_unrealized_pnl)
    return _frac(loss, account.net_liquidation)


def next_daily_reset(now: datetime, matrix: RiskMatrix) -> datetime:
    """The first daily reset strictly after `now` (tz-aware, in the reset's time zone)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zone = ZoneInfo(matrix.daily_reset.timezone)
    local = now.astimezone(zone)
    candidate = datetime.combine(local.date(), matrix.daily_reset.at, tzinfo=zone)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), matrix.daily_reset.at, tzinfo=zone)
    return candidate


@lru_cache(maxsize=1)
def _nyse():
    import exchange_calendars

    return exchange_calendars.get_calendar("XNYS")


def session_closed_reason(now: datetime, hours: SessionHours) -> str | None:
    """None when `now` is inside the configured session on an NYSE trading day, else why not.

    The configured window is intersected with the exchange's own hours, so early-close days end
    at the early close. Dates outside the packaged calendar fall back to weekday + window."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zone = ZoneInfo(hours.timezone)
    local = now.astimezone(zone)
    day: date = local.date()
    if day.weekday() >= 5:
        return f"{day.isoformat()} is a weekend"
    end: time = hours.end
    try:
        calendar = _nyse()
        if not calendar.is_session(day):
            return f"{day.isoformat()} is not an NYSE trading day"
        close = calendar.session_close(day).to_pydatetime().astimezone(zone).time()
        end = min(end, close)
    except ValueError:  # exchange_calendars.errors.DateOutOfBounds: beyond the packaged calendar
        pass
    if not hours.start <= local.time() < end:
        return (
            f"{local.strftime('%H:%M:%S')} {hours.timezone} is outside the session "
            f"{hours.start.strftime('%H:%M')}-{end.strftime('%H:%M')}"
        )
    return None


def uncovered_short_legs(legs: Sequence[OptionLeg]) -> list[tuple[OptionLeg, int]]:
    """Short legs not covered by long legs, with the number of uncovered contracts per unit.

    A short option is covered by a long option of the same right expiring on the same day or
    later (a vertical, condor, fly, calendar or diagonal), contract for contract; the strike does
    not matter for coverage (it sets the width of the loss, which stays bounded). A short strangle,
    the short put of a jade lizard or the extra shorts of a 1x2 ratio are uncovered.
    """
    uncovered: list[tuple[OptionLeg, int]] = []
    for right in ("C", "P"):
        shorts = sorted((leg for leg in legs if leg.right == right and leg.side == "sell"),
                        key=lambda leg: leg.expiry, reverse=True)
        longs = sorted((leg for leg in legs if leg.right == right and leg.side == "buy"),
                       key=lambda leg: leg.expiry, reverse=True)
        # Walk shorts from the latest expiry down: every long usable for a later short is usable
        # for an earlier one, so a running pool of eligible long contracts is an optimal match.
        pool, next_long = 0, 0
        for short in shorts:
            while next_long < len(longs) and longs[next_long].expiry >= short.expiry:
                pool += longs[next_long].ratio
                next_long += 1
            covered = min(pool, short.ratio)
            pool -= covered
            if short.ratio > covered:
                uncovered.append((short, short.ratio - covered))
    return uncovered


def _leg_label(leg: OptionLeg) -> str:
    return f"{leg.expiry.isoformat()} {leg.strike}{leg.right}"


# --------------------------------------------------------------------------- portfolio book


@dataclass
class _Exposure:
    """Greeks of one position in position units: delta/gamma in shares, vega $/vol pt, theta $/day."""

    ticker: str
    delta: float
    gamma: float
    vega: float
    theta: float
    beta: float
    spot: float


@dataclass
class _Book:
    nlv: Decimal
    margin_used: Decimal
    by_ticker: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    by_sector: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    by_structure: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    exposures: list[_Exposure] = field(default_factory=list)

    def add(self, ticker: str, sector: str, structure: str, max_loss: Decimal, exposure: _Exposure,
            margin: Decimal) -> None:
        self.by_ticker[ticker] += max_loss
        self.by_sector[sector] += max_loss
        self.by_structure[structure] += max_loss
        self.margin_used += margin
        self.exposures.append(exposure)

    def tickers(self) -> set[str]:
        return {ticker for ticker, amount in self.by_ticker.items() if amount > 0} | {
            e.ticker for e in self.exposures
        }


def _book_from(account: AccountState, positions: Sequence[Position]) -> _Book:
    # Position max loss already sits inside account.margin_used; it is not added again.
    book = _Book(nlv=account.net_liquidation, margin_used=account.margin_used)
    for p in positions:
        book.by_ticker[p.ticker.upper()] += p.max_loss
        book.by_sector[p.sector] += p.max_loss
        book.by_structure[p.structure] += p.max_loss
        book.exposures.append(
            _Exposure(p.ticker.upper(), p.delta, p.gamma, p.vega, p.theta, p.beta, p.underlying_price)
        )
    return book


@dataclass(frozen=True)
class _Metrics:
    var_nlv: float
    beta_delta_nlv: float
    short_gamma_nlv: float
    vega_nlv: float
    theta_nlv: float
    missing_spot: tuple[str, ...]


def _metrics(book: _Book, market_vol: float) -> _Metrics:
    nlv = float(book.nlv)
    priced = [e for e in book.exposures if e.spot > 0 and math.isfinite(e.spot)]
    missing = tuple(sorted({e.ticker for e in book.exposures
                            if not (e.spot > 0 and math.isfinite(e.spot)) and (e.delta or e.gamma)}))
    delta = np.array([e.delta for e in priced])
    gamma = np.array([e.gamma for e in priced])
    spot = np.array([e.spot for e in priced])
    beta = np.array([e.beta for e in priced])
    # One market factor (SPX at the regime's VIX): underlying i moves beta_i times the market.
    signs = np.where(beta < 0, -1.0, 1.0)
    var = delta_gamma_normal_var(
        delta, gamma, spot, np.abs(beta) * market_vol, correlation=np.outer(signs, signs)
    ).var
    beta_delta = float(np.sum(delta * beta * spot))
    short_gamma = -float(np.sum(gamma * spot**2 * 0.01))
    vega = sum(e.vega for e in book.exposures)
    theta = sum(e.theta for e in book.exposures)
    return _Metrics(
        var_nlv=max(var, 0.0) / nlv,
        beta_delta_nlv=abs(beta_delta) / nlv,
        short_gamma_nlv=max(short_gamma, 0.0) / nlv,
        vega_nlv=abs(vega) / nlv,
        theta_nlv=abs(theta) / nlv,
        missing_spot=missing,
    )


def _soft_check(
    code: str, what: str, limit: SoftLimit, before: float, after: float,
    vetoes: list[RiskReason], warnings: list[RiskReason],
) -> None:
    if not after > limit.limit:
        return
    worse = after > before + 1e-12
    message = f"{what} {after:.4%} of NLV exceeds the regime limit {limit.limit:.4%}"
    if not worse:
        message += f" (already {before:.4%} before this trade, which does not increase it)"
    reason = RiskReason(code=code, message=message, hard=False, limit=limit.limit, value=after)
    (vetoes if worse and limit.action == "veto" else warnings).append(reason)


def _max_correlation(
    ticker: str, others: set[str], returns: Mapping[str, ArrayLike]
) -> tuple[float | None, list[str]]:
    """Largest Pearson correlation of `ticker`'s returns with any of `others` over their common
    most recent observations (series are assumed to end on the same date), and the tickers whose
    returns were missing or too short to judge."""
    unknown: list[str] = []
    mine = returns.get(ticker)
    if mine is None:
        return None, sorted({ticker, *others})
    mine = np.asarray(mine, dtype=float).ravel()
    best: float | None = None
    for other in sorted(others):
        theirs = returns.get(other)
        if theirs is None:
            unknown.append(other)
            continue
        theirs = np.asarray(theirs, dtype=float).ravel()
        n = min(mine.size, theirs.size)
        a, b = mine[-n:], theirs[-n:]
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        if a.size < MIN_RETURNS_FOR_CORRELATION or a.std() == 0 or b.std() == 0:
            unknown.append(other)
            continue
        rho = float(np.corrcoef(a, b)[0, 1])
        best = rho if best is None else max(best, rho)
    return best, unknown


# --------------------------------------------------------------------------- pre-trade


def pre_trade(
    ticker: str,
    sector: str,
    account: AccountState,
    positions: list[Position],
    regime: Regime,
    matrix: RiskMatrix,
    now: datetime,
) -> RiskDecision:
    """Account- and ticker-level checks before any structure is chosen (stage "pre_trade").

    Hard (always veto): kill switch (account.halted), daily loss (realized + unrealized) >= 3% of
    NLV, free margin below 20% of NLV, the ticker's sector already at 15% of NLV, the ticker
    already at the single-position cap (5%, 2% in crisis), unusable account data.
    Soft (regime's account rules, veto): realized-loss lockout until the next daily reset,
    cooldown after the last loss, trades per day, session hours on NYSE days (America/New_York),
    symbol blocklist, regime disallowing new trades. An existing naked short position gives a
    hard warning. `now` must be timezone-aware (ValueError otherwise).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    ticker = ticker.upper()
    rules = matrix.for_regime(regime.name)
    vetoes: list[RiskReason] = []
    warnings: list[RiskReason] = []

    def decide() -> RiskDecision:
        return RiskDecision(ticker=ticker, stage="pre_trade", approved=not vetoes,
                            regime=regime.name, vetoes=vetoes, warnings=warnings)

    if account.halted:
        vetoes.append(_flag("kill_switch", f"trading halted: {account.halt_reason or 'kill switch on'}", True))
    problem = _account_problem(account) or next(filter(None, map(_position_problem, positions)), None)
    if problem:
        vetoes.append(_flag("invalid_account", f"cannot evaluate risk: {problem}", True))
        return decide()

    nlv = account.net_liquidation
    loss = daily_loss_fraction(account)
    halt = float(HARD_LIMITS.daily_loss_halt_nlv)
    if loss >= halt:
        vetoes.append(RiskReason(
            code="daily_loss_halt", hard=True, limit=halt, value=loss,
            message=f"daily loss {loss:.2%} of NLV reached the {halt:.0%} halt: no new trades today"))

    free = _frac(nlv - account.margin_used, nlv)
    min_free = float(HARD_LIMITS.min_free_margin_nlv)
    if free < min_free:
        vetoes.append(RiskReason(
            code="free_margin", hard=True, limit=min_free, value=free,
            message=f"free margin {free:.2%} of NLV is below the {min_free:.0%} minimum"))

    book = _book_from(account, positions)
    sector_cap = HARD_LIMITS.max_sector_nlv
    if book.by_sector[sector] >= sector_cap * nlv:
        vetoes.append(RiskReason(
            code="sector_limit", hard=True, limit=float(sector_cap), value=_frac(book.by_sector[sector], nlv),
            message=f"sector {sector!r} already holds {_money(book.by_sector[sector])} at risk, "
                    f"at or above the {sector_cap:.0%} of NLV limit"))
    position_cap = HARD_LIMITS.position_cap_nlv(regime.name)
    if book.by_ticker[ticker] >= position_cap * nlv:
        vetoes.append(RiskReason(
            code="position_size", hard=True, limit=float(position_cap), value=_frac(book.by_ticker[ticker], nlv),
            message=f"{ticker} already holds {_money(book.by_ticker[ticker])} at risk, at or above "
                    f"the {position_cap:.0%} of NLV single-position limit ({regime.name})"))
    naked = sorted({p.ticker for p in positions if p.has_naked_short})
    if naked:
        warnings.append(_flag("existing_naked_short",
                              f"open positions with naked short options: {', '.join(naked)}", True))

    account_rules = rules.account_rules
    realized_loss = _frac(-account.daily_realized_pnl, nlv)
    lockout = float(account_rules.daily_realized_loss_lockout_nlv)
    if realized_loss >= lockout:
        vetoes.append(RiskReason(
            code="daily_loss_lockout", hard=False, limit=lockout, value=realized_loss,
            message=f"realized loss {realized_loss:.2%} of NLV reached the {lockout:.2%} lockout; "
                    f"locked until the daily reset at {next_daily_reset(now, matrix).isoformat()}"))
    if account.last_loss_at is not None and account_rules.cooldown_minutes_after_loss > 0:
        if account.last_loss_at.tzinfo is None:
            raise ValueError("account.last_loss_at must be timezone-aware")
        until = account.last_loss_at + timedelta(minutes=account_rules.cooldown_minutes_after_loss)
        if now < until:
            since = (now - account.last_loss_at).total_seconds() / 60.0
            vetoes.append(RiskReason(
                code="cooldown", hard=False, limit=float(account_rules.cooldown_minutes_after_loss), value=since,
                message=f"cooling down after a loss at {account.last_loss_at.isoformat()}: "
                        f"no new trades until {until.isoformat()}"))
    if account.trades_today >= account_rules.max_trades_per_day:
        vetoes.append(RiskReason(
            code="trade_frequency", hard=False, limit=float(account_rules.max_trades_per_day),
            value=float(account.trades_today),
            message=f"{account.trades_today} trades today reached the {regime.name} maximum of "
                    f"{account_rules.max_trades_per_day}"))
    closed = session_closed_reason(now, account_rules.session)
    if closed:
        vetoes.append(_flag("outside_session", f"market session closed: {closed}", False))
    if ticker in account_rules.symbol_blocklist:
        vetoes.append(_flag("symbol_blocked", f"{ticker} is on the {regime.name} symbol blocklist", False))
    if not rules.allow_new_trades:
        vetoes.append(_flag("regime_no_new_trades",
                            f"regime {regime.name} allows no new trades ({'; '.join(regime.reasons)})", False))
    return decide()


# --------------------------------------------------------------------------- post-trade


def post_trade(
    trades: list[SizedTrade],
    account: AccountState,
    positions: list[Position],
    regime: Regime,
    matrix: RiskMatrix,
    sectors: dict[str, str],
    *,
    betas: Mapping[str, float] | None = None,
    returns: Mapping[str, ArrayLike] | None = None,
) -> list[RiskDecision]:
    """Portfolio-level check of sized trades (stage "post_trade"), one decision per trade, in
    order. Each trade is judged against the book of `positions` plus the trades approved before
    it; a vetoed trade does not enter the book.

    Hard (veto): kill switch; daily loss >= 3%; naked short option (a short leg not covered by a
    long leg of the same right expiring the same day or later) or unbounded max loss; ticker max
    loss (existing + new, contracts * max_loss) above 5% of NLV (2% in crisis); sector above 15%
    (`sectors` maps ticker -> sector; an unknown sector is vetoed because it cannot be checked);
    free margin below 20% after the trade (margin of a defined-risk trade = its max loss).
    More than 10 contracts: requires_acknowledgement and a hard warning.
    Soft (regime matrix, veto or warn): 1-day 95% VaR (delta-gamma-normal, one SPX factor with
    annualized vol = VIX/100 and each underlying moving beta times it), beta-weighted dollar
    delta, short dollar gamma per 1%, |vega|, |theta|, strategy concentration (max loss of one
    structure), and correlation with held tickers when `returns` (daily returns per ticker,
    aligned to end on the same day) is given. `betas` gives each new ticker's beta to SPX;
    default the beta of a held position in it, else 1.0.
    Trade Greeks: proposal per-share per-unit Greeks * multiplier * contracts (vega per vol
    point, theta per day). Position Greeks are taken as position totals in those units.
    A trade with zero contracts is not approved (soft veto "no_contracts").
    """
    decisions: list[RiskDecision] = []
    rules = matrix.for_regime(regime.name)
    soft = rules.soft_limits
    market_vol = regime.vix / 100.0
    problem = _account_problem(account) or next(filter(None, map(_position_problem, positions)), None)
    book = None if problem else _book_from(account, positions)
    held_beta = {p.ticker.upper(): p.beta for p in positions}

    for trade in trades:
        proposal = trade.proposal
        ticker = proposal.ticker.upper()
        vetoes: list[RiskReason] = []
        warnings: list[RiskReason] = []
        needs_ack = False

        def decide() -> RiskDecision:
            return RiskDecision(ticker=ticker, stage="post_trade", approved=not vetoes, regime=regime.name,
                                vetoes=vetoes, warnings=warnings, requires_acknowledgement=needs_ack)

        if account.halted:
            vetoes.append(_flag("kill_switch", f"trading halted: {account.halt_reason or 'kill switch on'}", True))
        if book is None:
            vetoes.append(_flag("invalid_account", f"cannot evaluate risk: {problem}", True))
            decisions.append(decide())
            continue
        nlv = account.net_liquidation
        loss = daily_loss_fraction(account)
        halt = float(HARD_LIMITS.daily_loss_halt_nlv)
        if loss >= halt:
            vetoes.append(RiskReason(
                code="daily_loss_halt", hard=True, limit=halt, value=loss,
                message=f"daily loss {loss:.2%} of NLV reached the {halt:.0%} halt: no new trades today"))

        uncovered = uncovered_short_legs(proposal.legs)
        if proposal.cash_secured_puts:
            secured = [(leg, n) for leg, n in uncovered if leg.right == "P"]
            uncovered = [(leg, n) for leg, n in uncovered if leg.right != "P"]
            needed = sum((leg.strike * n for leg, n in secured), Decimal(0)) * proposal.multiplier * trade.contracts
            free_cash = account.cash - account.margin_used
            if needed > free_cash:
                vetoes.append(RiskReason(
                    code="cash_secured_put_unfunded", hard=True, limit=float(free_cash), value=float(needed),
                    message=f"{proposal.structure}: its cash-secured short puts need ${needed:,.0f} of cash, "
                            f"only ${free_cash:,.0f} is free"))
            elif secured:
                warnings.append(RiskReason(
                    code="cash_secured_put", hard=False, limit=float(free_cash), value=float(needed),
                    message=f"{proposal.structure}: ${needed:,.0f} of cash secures its short puts"))
        if uncovered:
            count = sum(n for _, n in uncovered)
            vetoes.append(RiskReason(
                code="naked_short", hard=True, limit=0.0, value=float(count),
                message=f"{proposal.structure} has uncovered short options: "
                        + ", ".join(f"{n}x {_leg_label(leg)}" for leg, n in uncovered)))
        if not proposal.max_loss.is_finite() or proposal.max_loss <= 0:
            vetoes.append(_flag("invalid_max_loss",
                                f"{proposal.structure} max loss per unit is {proposal.max_loss}; a "
                                "defined-risk trade needs a positive finite max loss", True))
            decisions.append(decide())
            continue

        contracts = trade.contracts
        if contracts == 0:
            vetoes.append(RiskReason(
                code="no_contracts", hard=False, limit=1.0, value=0.0,
                message="sizing produced zero contracts"
                        + (f" ({', '.join(trade.caps_applied)})" if trade.caps_applied else "")))
            decisions.append(decide())
            continue
        if contracts > HARD_LIMITS.max_contracts_without_ack:
            needs_ack = True
            warnings.append(RiskReason(
                code="contracts_need_ack", hard=True, limit=float(HARD_LIMITS.max_contracts_without_ack),
                value=float(contracts),
                message=f"{contracts} contracts exceeds {HARD_LIMITS.max_contracts_without_ack}: an "
                        "approver must acknowledge the size explicitly"))

        # The larger of the recomputed and the recorded capital at risk: never trust the smaller.
        at_risk = max(proposal.max_loss * contracts, trade.capital_at_risk)
        position_cap = HARD_LIMITS.position_cap_nlv(regime.name)
        ticker_after = book.by_ticker[ticker] + at_risk
        if ticker_after > position_cap * nlv:
            vetoes.append(RiskReason(
                code="position_size", hard=True, limit=float(position_cap), value=_frac(ticker_after, nlv),
                message=f"{ticker} max loss {_money(ticker_after)} ({_frac(ticker_after, nlv):.2%} of NLV, "
                        f"this trade {_money(at_risk)}) exceeds the {position_cap:.0%} single-position "
                        f"limit ({regime.name})"))
        sector = sectors.get(proposal.ticker) or sectors.get(ticker)
        if sector is None:
            vetoes.append(_flag("sector_unknown",
                                f"no sector known for {ticker}: the 15% sector limit cannot be checked", True))
        else:
            sector_after = book.by_sector[sector] + at_risk
            sector_cap = HARD_LIMITS.max_sector_nlv
            if sector_after > sector_cap * nlv:
                vetoes.append(RiskReason(
                    code="sector_limit", hard=True, limit=float(sector_cap), value=_frac(sector_after, nlv),
                    message=f"sector {sector!r} max loss {_money(sector_after)} "
                            f"({_frac(sector_after, nlv):.2%} of NLV) exceeds the {sector_cap:.0%} limit"))
        free_after = _frac(nlv - book.margin_used - at_risk, nlv)
        min_free = float(HARD_LIMITS.min_free_margin_nlv)
        if free_after < min_free:
            vetoes.append(RiskReason(
                code="free_margin", hard=True, limit=min_free, value=free_after,
                message=f"free margin after the trade {free_after:.2%} of NLV is below the "
                        f"{min_free:.0%} minimum (margin = max loss {_money(at_risk)})"))

        scale = proposal.multiplier * contracts
        beta = float(betas[ticker]) if betas and ticker in betas else held_beta.get(ticker, 1.0)
        exposure = _Exposure(ticker, proposal.delta * scale, proposal.gamma * scale, proposal.vega * scale,
                             proposal.theta * scale, beta, proposal.underlying_price)
        before = _metrics(book, market_vol)
        trial = _Book(nlv=book.nlv, margin_used=book.margin_used, exposures=[*book.exposures, exposure])
        after = _metrics(trial, market_vol)
        if after.missing_spot:
            warnings.append(RiskReason(
                code="greeks_incomplete", hard=False,
                message="no underlying price for " + ", ".join(after.missing_spot)
                        + ": their delta and gamma are left out of VaR, beta delta and gamma"))
        for code, what, limit, b, a in (
            ("var_budget", "1-day 95% VaR", soft.var_95_1d_nlv, before.var_nlv, after.var_nlv),
            ("beta_weighted_delta", "SPX beta-weighted dollar delta", soft.beta_weighted_delta_nlv,
             before.beta_delta_nlv, after.beta_delta_nlv),
            ("short_gamma", "short dollar gamma per 1% move", soft.short_gamma_1pct_nlv,
             before.short_gamma_nlv, after.short_gamma_nlv),
            ("vega", "net vega per vol point", soft.vega_nlv, before.vega_nlv, after.vega_nlv),
            ("theta", "net theta per day", soft.theta_nlv, before.theta_nlv, after.theta_nlv),
        ):
            _soft_check(code, what, limit, b, a, vetoes, warnings)
        structure_after = book.by_structure[proposal.structure] + at_risk
        _soft_check("strategy_concentration", f"{proposal.structure} max loss",
                    soft.strategy_concentration_nlv, _frac(book.by_structure[proposal.structure], nlv),
                    _frac(structure_after, nlv), vetoes, warnings)

        others = book.tickers() - {ticker}
        if others:
            if returns is None:
                warnings.append(RiskReason(
                    code="correlation_not_checked", hard=False,
                    message="no return series given: correlation with held tickers not checked"))
            else:
                rho, unknown = _max_correlation(ticker, others, returns)
                if unknown:
                    warnings.append(RiskReason(
                        code="correlation_unknown", hard=False,
                        message="returns missing or too short (< "
                                f"{MIN_RETURNS_FOR_CORRELATION}) for: {', '.join(unknown)}"))
                if rho is not None and rho > soft.correlation.limit:
                    reason = RiskReason(
                        code="correlation", hard=False, limit=soft.correlation.limit, value=rho,
                        message=f"{ticker} return correlation {rho:.2f} with a held ticker exceeds "
                                f"{soft.correlation.limit:.2f}")
                    (vetoes if soft.correlation.action == "veto" else warnings).append(reason)

        if not vetoes:
            book.add(ticker, sector or "", proposal.structure, at_risk, exposure, at_risk)
        decisions.append(decide())
    return decisions
