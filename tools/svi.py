"""Raw SVI smiles per expiry: fit, butterfly (density) check and calendar check.

Conventions
-----------
* log-moneyness ``k = ln(K / F)`` with ``F`` the expiry's forward;
* total implied variance ``w = sigma_impl**2 * t`` (``t`` in years);
* raw SVI (Gatheral 2004): ``w(k) = a + b * (rho * (k - m) + sqrt((k - m)**2 + sigma**2))``.

Fit: the quasi-explicit method (Zeliade; De Marco & Martini 2009). With ``y = (k - m) / sigma``
the smile reads ``w = a + d*y + c*sqrt(y**2 + 1)``, ``c = b*sigma``, ``d = rho*b*sigma``: for a
fixed ``(m, sigma)`` it is linear in ``(a, d, c)``. The slope domain ``|d| <= c``,
``c + |d| <= S*sigma`` is a diamond in ``(c, d)``; in rotated coordinates ``u = c + d``,
``v = c - d`` it is the box ``[0, S*sigma]**2``, so the inner problem is a 3-variable
*box-constrained* least squares, solved exactly (every face of the box, closed form).
The outer search over ``(m, log sigma)`` is a coarse grid, then short runs of Newton steps
from 6-point finite-difference stencils (restarted from their best point), on thinned copies of
the slices, then a short polish on all points; every stage is vectorized over all expiries at
once (`fit_svi_many`), which is what makes a whole chain fit in milliseconds.

Two deliberate departures from Zeliade's box, both forced by real SPX/SPY smiles:
* wing slope cap ``S = 2`` (Roger Lee's moment bound, b(1+|rho|) <= 2) instead of 4: with 4 the
  fits take wing slopes near 4 and have butterfly arbitrage just outside the quotes;
* ``a`` may be negative (down to ``-S*sigma``) as long as the smile's minimum
  ``a + b*sigma*sqrt(1 - rho^2) = a + sqrt(u*v)`` stays >= 0 (where it would not, ``a >= 0`` is
  imposed instead); ``a >= 0`` binds on nearly every SPX expiry and costs several vol points.
The search only accepts parameters whose density g(k) stays above a small margin on the slice's
check range (the quoted k range widened by 25% of its span each side, and at least
[-1.5, 1.5]), so a successful fit is free of butterfly arbitrage there by construction; the
wing cap makes g positive beyond it as well (g -> 1/4 - S^2/16 >= 0 as |k| -> infinity). The
search checks g on a sparse grid (refined where dips can hide); every final fit is then checked
on a dense uniform grid and, if it fails, moved toward its a >= 0 solution until it passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

# Roger Lee's moment formula: total variance grows at most 2|k| in either wing.
_SLOPE_CAP = 2.0
# sigma is searched down to this fraction of the quotes' k-span (a sharper kink than any
# real smile) and up to twice the span (a smile flatter than the data can distinguish).
_SIGMA_FLOOR_FRACTION = 1e-3
_SIGMA_CEILING_FRACTION = 2.0
# Coarse (m, log sigma) grid per expiry; m spans the quotes' k range widened by half its span.
_COARSE_M_POINTS = 10
_COARSE_SIGMA_POINTS = 12
# The coarse grid and the local search see at most this many of a slice's points (evenly spread
# in k); the result is then polished on every point.
_COARSE_MAX_POINTS = 48
_COARSE_CHECKED = 12
_SEARCH_MAX_POINTS = 64
# Short local searches restarted from their best point with a fresh (coarse-cell) stencil: on
# real smiles the optimum usually sits on the no-arbitrage boundary, where a long search creeps
# along a kink; restarts move faster and, on the SPX chain, end lower.
_MAX_SEARCH_ITERATIONS = 8
# Local searches per expiry, each from one of the best coarse cells.
_SEARCH_STARTS = 3
_SEARCH_RESTARTS = 3
_MAX_POLISH_ITERATIONS = 2
# A local search stops once its objective gained less than this (relative) over that many steps.
_STALL_RELATIVE_GAIN = 1e-6
_STALL_WINDOW = 5
# Rounds of the search for the no-arbitrage boundary between the a >= 0 and free-a solutions;
# each round narrows the bracket fourfold (2 rounds: 1/16 of the segment).
_SEGMENT_ROUNDS = 2
_QUARTERS = np.array([0.25, 0.5, 0.75])

# No-arbitrage range a fit must satisfy: the quoted k range widened by CHECK_RANGE_MARGIN of its
# span on each side, and at least [-CHECK_RANGE_FLOOR, CHECK_RANGE_FLOOR].
CHECK_RANGE_MARGIN = 0.25
CHECK_RANGE_FLOOR = 1.5
_CHECK_GRID_POINTS = 24
_GRID_INDEX = np.arange(_CHECK_GRID_POINTS, dtype=float)
_REFINE_FRACTIONS = np.linspace(0.0, 1.0, 7)[1:-1]
# During the fit g(k) must stay above this margin on the check points, so that g >= 0 also holds
# between them; a reported violation is g < -_BUTTERFLY_TOLERANCE (round-off only).
_FIT_DENSITY_MARGIN = 1e-3
# Every final fit is verified on this many uniform points of its check range; a failing one is
# moved toward its a >= 0 solution by these fractions of the way until it passes.
VERIFY_GRID_POINTS = 1201
_REPAIR_STEPS = np.linspace(0.95, 0.0, 20)
_BUTTERFLY_TOLERANCE = 1e-9
_EYE3 = np.eye(3)
# Offsets, in steps, of the finite-difference stencil around the current (m, log sigma): the
# centre (index 0), both neighbours along each axis, and one diagonal for the cross derivative.
_STENCIL = np.array([(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1)], dtype=float)


@dataclass(frozen=True)
class SVIParams:
    """Raw SVI parameters of one expiry's total-variance smile (see module docstring)."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float

    def total_variance(self, k: np.ndarray | float) -> np.ndarray:
        """w(k), total implied variance (vol**2 * years) at log-moneyness k = ln(K/F)."""
        x = np.asarray(k, dtype=float) - self.m
        return self.a + self.b * (self.rho * x + np.sqrt(x * x + self.sigma**2))

    def implied_vol(self, k: np.ndarray | float, t: float) -> np.ndarray:
        """Black implied vol (annualized decimal, 0.2 = 20%) at log-moneyness k, expiry t years.

        NaN where the smile's total variance is negative (an invalid parameter set there)."""
        if not t > 0:
            raise ValueError(f"t must be positive years, got {t}")
        w = self.total_variance(k)
        return np.where(w >= 0, np.sqrt(np.maximum(w, 0.0) / t), np.nan)

    def derivatives(self, k: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(w, dw/dk, d2w/dk2) at k."""
        x = np.asarray(k, dtype=float) - self.m
        root = np.sqrt(x * x + self.sigma**2)
        w = self.a + self.b * (self.rho * x + root)
        return w, self.b * (self.rho + x / root), self.b * self.sigma**2 / root**3

    @property
    def min_total_variance(self) -> float:
        """The smile's minimum, a + b*sigma*sqrt(1 - rho^2) (>= 0 for a valid smile)."""
        return float(self.a + self.b * self.sigma * np.sqrt(max(0.0, 1.0 - self.rho**2)))


@dataclass(frozen=True)
class SmileData:
    """One expiry's points to fit: log-moneyness k, total variance w, optional weights on the
    squared total-variance residuals (default 1), optional t in years (for vol-point RMSE)."""

    k: np.ndarray
    w: np.ndarray
    weights: np.ndarray | None = None
    t: float | None = None


@dataclass(frozen=True)
class SVIFit:
    """Result of `fit_svi` / `fit_svi_many`.

    ``rmse_vol_points``: unweighted root-mean-square error of the fitted implied vol against the
    input points, in vol points (1.0 = one percentage point of vol); NaN when ``t`` was not given.
    ``rmse_total_variance``: the same in total-variance units. ``check_range``: the k interval on
    which the fit was required to be free of butterfly arbitrage. ``success`` is False (with
    ``message`` saying why, and ``params`` None) when the data cannot be fitted.
    """

    params: SVIParams | None
    rmse_vol_points: float
    rmse_total_variance: float
    n_points: int
    success: bool
    message: str
    check_range: tuple[float, float] = (float("nan"), float("nan"))


@dataclass
class _Batch:
    """Padded per-expiry data (E expiries, N points; padding has weight 0) and its moments."""

    k: np.ndarray  # (E, N)
    z_weights: np.ndarray  # (E, N, 3): columns weight, weight*w, weight*k
    s0: np.ndarray  # (E,) sum weight
    s1: np.ndarray  # sum weight*k
    s2: np.ndarray  # sum weight*k^2
    r0: np.ndarray  # sum weight*w
    r1: np.ndarray  # sum weight*w*k
    c: np.ndarray  # sum weight*w^2
    w_max: np.ndarray  # (E,)
    check_range: np.ndarray  # (E, 2): the k interval that must be free of butterfly arbitrage


def _normal_equations(batch: _Batch, rows: np.ndarray, m: np.ndarray, sigma: np.ndarray):
    """The inner least squares of every (m, sigma) (arrays (R, P)) of expiries ``rows``, in the
    variables (a, u, v): Gram matrices (R*P, 3, 3), right-hand sides (R*P, 3), the constant
    sum weight*w^2 (R*P,), and the box bounds lower/upper (R*P, 3)."""
    k = batch.k[rows]
    y = np.subtract(k[:, None, :], m[:, :, None])  # (R, P, N); in place from here on:
    y /= sigma[:, :, None]  # y = (k - m) / sigma
    z = np.multiply(y, y, out=y)
    z += 1.0
    np.sqrt(z, out=z)  # z = sqrt(y * y + 1)
    # Sums over the points: the z-dependent ones by one batched product, the rest from moments.
    sz, swz, skz = np.moveaxis(z @ batch.z_weights[rows], 2, 0)  # each (R, P)
    s0, s1, s2 = batch.s0[rows, None], batch.s1[rows, None], batch.s2[rows, None]
    r0, r1, c = batch.r0[rows, None], batch.r1[rows, None], batch.c[rows, None]
    sy = (s1 - m * s0) / sigma
    syy = (s2 - 2.0 * m * s1 + m * m * s0) / sigma**2
    szy = (skz - m * sz) / sigma
    swy = (r1 - m * r0) / sigma
    # Basis 1, u = (z + y)/2, v = (z - y)/2 (u v = 1/4): w = a + u*(c + d) + v*(c - d).
    # Filled in place (the Gram matrix row-major, symmetric), not stacked from broadcasts.
    gram = np.empty(m.shape + (9,))
    gram[..., 0] = s0
    gram[..., 1] = gram[..., 3] = 0.5 * (sz + sy)
    gram[..., 2] = gram[..., 6] = 0.5 * (sz - sy)
    gram[..., 4] = 0.25 * (2.0 * syy + s0 + 2.0 * szy)
    gram[..., 5] = gram[..., 7] = 0.25 * s0
    gram[..., 8] = 0.25 * (2.0 * syy + s0 - 2.0 * szy)
    rhs = np.empty(m.shape + (3,))
    rhs[..., 0] = r0
    rhs[..., 1] = 0.5 * (swz + swy)
    rhs[..., 2] = 0.5 * (swz - swy)
    const = np.broadcast_to(c, m.shape).ravel()
    cap = (_SLOPE_CAP * sigma).ravel()
    upper = np.empty((cap.size, 3))
    upper.reshape(m.shape + (3,))[..., 0] = batch.w_max[rows, None]
    upper[:, 1] = upper[:, 2] = cap
    lower = np.zeros_like(upper)
    lower[:, 0] = -cap
    gram, rhs = gram.reshape(-1, 3, 3), rhs.reshape(-1, 3)
    return gram, rhs, const, lower, upper


def _inner(batch: _Batch, rows: np.ndarray, m: np.ndarray, sigma: np.ndarray):
    """Best arbitrage-free (a, c, d) for every (m, sigma) of expiries ``rows``.

    m, sigma: (R, P). Returns acd (R, P, 3) and the weighted sum of squared residuals (R, P);
    +inf where neither the free-sign-a nor the a >= 0 solution is free of butterfly arbitrage
    on the expiry's check grid.
    """
    n_rows, n_points = m.shape
    gram, rhs, const, lower, upper = _normal_equations(batch, rows, m, sigma)

    # Candidate A: a >= -S sigma, valid only while the smile's minimum a + sqrt(u v) stays >= 0
    # and g >= margin on the check range. Where A is invalid, candidate B: a >= 0 (always a
    # non-negative smile); if B is valid, the best valid point on the segment from B to A is
    # taken (the objective is convex along it with its minimum at A, so that is the valid point
    # nearest A, found by bracketing). This keeps the reduced objective continuous across the
    # no-arbitrage boundary, where the optimum usually sits.
    flat_m, flat_sigma = m.ravel(), sigma.ravel()
    bounds = np.repeat(batch.check_range[rows], n_points, axis=0)
    p = _solve_bounded(gram, rhs, const, lower, upper)
    invalid = ~_is_valid(p, flat_m, flat_sigma, bounds)
    if invalid.any():
        bad = np.flatnonzero(invalid)
        lower_b = lower[bad]
        lower_b[:, 0] = 0.0
        p_a = p[bad]
        p_b = _solve_bounded(gram[bad], rhs[bad], const[bad], lower_b, upper[bad])
        m_bad, sigma_bad, bounds_bad = flat_m[bad], flat_sigma[bad], bounds[bad]
        # Search the segment in rounds: each round tests 3 interior points of the current
        # bracket at once (one vectorized check) and keeps the quarter below the first failure.
        # The first round's points do not depend on B, so B is checked in the same call; later
        # rounds run only where B is valid (elsewhere the point is +inf whatever it is).
        lo, width = np.zeros(len(bad)), np.ones(len(bad))
        lanes = np.arange(len(bad))
        for round_ in range(_SEGMENT_ROUNDS):
            lam = lo[lanes, None] + width[lanes, None] * _QUARTERS[None, :]  # (B, 3)
            trial = (p_b[lanes, None, :] + lam[:, :, None] * (p_a[lanes] - p_b[lanes])[:, None, :]).reshape(-1, 3)
            rep = np.repeat(lanes, 3)
            if round_ == 0:
                checked = _is_valid(np.concatenate([p_b, trial]), np.concatenate([m_bad, m_bad[rep]]),
                                    np.concatenate([sigma_bad, sigma_bad[rep]]),
                                    np.concatenate([bounds_bad, bounds_bad[rep]]))
                b_valid, ok = checked[:len(bad)], checked[len(bad):].reshape(-1, 3)
            else:
                ok = _is_valid(trial, m_bad[rep], sigma_bad[rep], bounds_bad[rep]).reshape(-1, 3)
            # Number of leading valid trials (validity is expected to hold on [0, lambda*]).
            passed = np.argmin(np.concatenate([ok, np.zeros((len(lanes), 1), bool)], axis=1), axis=1)
            lo[lanes] = lo[lanes] + width[lanes] * 0.25 * passed
            width = width * 0.25
            if round_ == 0:
                lanes = np.flatnonzero(b_valid)
            if lanes.size == 0:
                break
        p[bad] = p_b + lo[:, None] * (p_a - p_b)
        invalid[bad] = ~b_valid
    objective = np.where(invalid, np.inf, _objective(p, gram, rhs, const))
    a, u, v = p[:, 0], p[:, 1], p[:, 2]
    acd = np.stack([a, 0.5 * (u + v), 0.5 * (u - v)], axis=1)
    return acd.reshape(n_rows, n_points, 3), objective.reshape(n_rows, n_points)


def _coarse_objective(batch: _Batch, m: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Objective of every coarse cell (E, P), +inf where not arbitrage free. To save work, only
    each expiry's _COARSE_CHECKED most promising cells (lowest free-a objective, a lower bound
    on both candidates') are checked for arbitrage; the rest count as +inf."""
    n_exp, n_cells = m.shape
    gram, rhs, const, lower, upper = _normal_equations(batch, np.arange(n_exp), m, sigma)
    p_a = _solve_bounded(gram, rhs, const, lower, upper)
    obj_a = _objective(p_a, gram, rhs, const).reshape(n_exp, n_cells)
    top = np.argsort(obj_a, axis=1)[:, :_COARSE_CHECKED]
    flat = (np.arange(n_exp)[:, None] * n_cells + top).ravel()
    bounds = np.repeat(batch.check_range, top.shape[1], axis=0)
    p = p_a[flat]
    invalid = ~_is_valid(p, m.ravel()[flat], sigma.ravel()[flat], bounds)
    if invalid.any():
        sel = flat[invalid]
        lower_b = lower[sel]
        lower_b[:, 0] = 0.0
        p[invalid] = _solve_bounded(gram[sel], rhs[sel], const[sel], lower_b, upper[sel])
        invalid[invalid] = ~_is_valid(p[invalid], m.ravel()[sel], sigma.ravel()[sel], bounds[invalid])
    objective = np.full(n_exp * n_cells, np.inf)
    objective[flat] = np.where(invalid, np.inf, _objective(p, gram[flat], rhs[flat], const[flat]))
    return objective.reshape(n_exp, n_cells)


def _objective(p, gram, rhs, const):
    """Weighted sum of squared residuals p'Gp - 2 r'p + sum weight*w^2 (clipped at 0: round-off)."""
    return np.maximum(np.sum(p * ((gram @ p[:, :, None])[:, :, 0] - 2.0 * rhs), axis=1) + const, 0.0)


def _solve_bounded(gram, rhs, const, lower, upper):
    """Exact minimizer of p'Gp - 2 r'p over lower <= p <= upper (substituting p = lower + q);
    lower must be zero but in its first column (a's bound).

    Fast path first: guess the active set (none; then the bounds the unconstrained solution
    crosses) and keep the guess wherever the KKT conditions prove it optimal; the full face
    enumeration `_solve_box_lsq` runs only for the rest.
    """
    # lower is nonzero only in a's column (every caller): G @ lower is that column times it,
    # exactly what the full product gives (the other terms are exact zeros).
    shifted_rhs = rhs - gram[:, :, 0] * lower[:, :1]
    width = upper - lower
    q, optimal = _solve_active_set(gram, shifted_rhs, width, None)
    if not optimal.all():
        redo = np.flatnonzero(~optimal)
        guess = np.where(q[redo] < 0, 1, np.where(q[redo] > width[redo], 2, 0)).astype(np.int8)
        q_guess, ok = _solve_active_set(gram[redo], shifted_rhs[redo], width[redo], guess)
        q[redo] = q_guess
        redo = redo[~ok]
        if redo.size:
            q[redo], _ = _solve_box_lsq(gram[redo], shifted_rhs[redo], const[redo], width[redo])
    return q + lower


def _solve_active_set(gram, rhs, upper, pattern):
    """Solve each problem (bounds 0 <= q <= upper) with a guessed active set; say where the guess
    is optimal. pattern (n, 3): 0 free, 1 at 0, 2 at upper; None: all free. For a convex QP the
    KKT conditions are sufficient: free coordinates inside their bounds, the gradient pointing
    outward at the bound ones."""
    if pattern is None:  # no bound active: the plain system, and only the free coordinates' check
        q = _solve3(gram, rhs)
        with np.errstate(invalid="ignore"):
            kkt = (q >= 0) & (q <= upper)
    else:
        free = pattern == 0
        target = np.where(free, rhs, np.where(pattern == 2, upper, 0.0))
        system = np.where(free[:, :, None], gram, _EYE3)
        q = _solve3(system, target)
        half_gradient = (gram @ q[:, :, None])[:, :, 0] - rhs
        slack = 1e-12 * (np.abs(rhs) + np.abs(gram).sum(axis=2) * np.abs(q))
        with np.errstate(invalid="ignore"):
            kkt = np.where(free, (q >= 0) & (q <= upper),
                           np.where(pattern == 1, half_gradient >= -slack, half_gradient <= slack))
    finite = np.isfinite(q)
    return np.where(finite, q, 0.0), _rows_all(kkt & finite)


# Cramer's rule on row-major 3x3 matrices: cofactor j is m[A]*m[B] - m[C]*m[D] (e.g. the first,
# e*i - f*h), the cofactor matrix laid out row-major like m.
_COFACTOR_A, _COFACTOR_B, _COFACTOR_C, _COFACTOR_D = (np.array(col) for col in zip(
    (4, 8, 5, 7), (2, 7, 1, 8), (1, 5, 2, 4),
    (5, 6, 3, 8), (0, 8, 2, 6), (2, 3, 0, 5),
    (3, 7, 4, 6), (1, 6, 0, 7), (0, 4, 1, 3),
))


def _rows_all(mask: np.ndarray) -> np.ndarray:
    """mask.all(axis=1) for a few columns: column-wise ands, much cheaper than a reduction over
    a short axis."""
    out = mask[:, 0].copy()
    for j in range(1, mask.shape[1]):
        out &= mask[:, j]
    return out


def _solve3(m: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Cramer's rule for a batch of 3x3 systems m (n,3,3) q = r (n,3); non-finite if singular.

    All nine cofactors in one pass of gathered columns (the same products and differences,
    in the same order, as writing each out)."""
    flat = m.reshape(len(m), 9)
    cof = flat[:, _COFACTOR_A] * flat[:, _COFACTOR_B] - flat[:, _COFACTOR_C] * flat[:, _COFACTOR_D]
    det = flat[:, 0] * cof[:, 0] + flat[:, 1] * cof[:, 3] + flat[:, 2] * cof[:, 6]
    terms = cof.reshape(-1, 3, 3) * r[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (terms[:, :, 0] + terms[:, :, 1] + terms[:, :, 2]) / det[:, None]


def _is_valid(p: np.ndarray, m: np.ndarray, sigma: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """A candidate (a, u, v) is a valid smile: minimum total variance a + sqrt(u v) >= 0 and no
    butterfly arbitrage on its check range."""
    valid = p[:, 0] + np.sqrt(p[:, 1] * p[:, 2]) >= 0
    if valid.all():  # the usual case: no selection needed
        return ~_has_arbitrage(p, m, sigma, bounds)
    valid[valid] = ~_has_arbitrage(p[valid], m[valid], sigma[valid], bounds[valid])
    return valid


def _density_on_tau(a, c, d, m, s, tau):
    """(g, q) at k = m + s sinh(tau) for candidates given as column vectors (R, 1), where
    q = 1 - k w'/(2w), so that g = q^2 - (w'^2/4)(1/w + 1/4) + w''/2; g is -inf where w <= 0.

    Evaluated in place in a few buffers (the search calls this on every candidate it prices), each
    formula in the order written in the comments, so the values are those of the plain
    expressions bit for bit."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cosh = np.exp(tau)  # growth = e^tau
        decay = np.divide(1.0, cosh)
        sinh = np.subtract(cosh, decay)
        sinh *= 0.5  # sinh = 0.5 * (growth - decay)
        cosh += decay
        cosh *= 0.5  # cosh = 0.5 * (growth + decay)
        # With x = k - m = sigma sinh(tau), sqrt(x^2 + sigma^2) = sigma cosh(tau), and c = b sigma,
        # d = rho b sigma: w = a + d sinh + c cosh, w' = (d + c tanh)/sigma, w'' = c/(sigma^2 cosh^3).
        k = s * sinh
        k += m  # k = m + s * sinh
        w = d * sinh
        w += a
        w += np.multiply(c, cosh, out=decay)  # w = a + d * sinh + c * cosh
        w1 = np.multiply(c, sinh, out=sinh)
        w1 /= cosh
        w1 += d
        w1 /= s  # w1 = (d + c * sinh / cosh) / s
        w2 = np.power(cosh, 3, out=cosh)
        w2 *= s * s
        np.divide(c, w2, out=w2)  # w2 = c / (s * s * cosh**3)
        q = np.multiply(k, w1, out=k)
        q /= np.multiply(2.0, w, out=decay)
        np.subtract(1.0, q, out=q)  # q = 1 - k * w1 / (2 * w)
        g = np.multiply(q, q)
        term = np.multiply(0.25, w1, out=decay)
        term *= w1
        inverse_w = np.divide(1.0, w, out=w1)
        inverse_w += 0.25
        term *= inverse_w
        g -= term
        w2 *= 0.5
        g += w2  # g = q * q - 0.25 * w1 * w1 * (1 / w + 0.25) + 0.5 * w2
    return np.where(w > 0, g, -np.inf), q


def _has_arbitrage(p: np.ndarray, m: np.ndarray, sigma: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Per candidate (a, u, v) at (m, sigma): is g(k) < margin or w(k) <= 0 somewhere on
    [lo, hi] (bounds (R, 2))?

    Points k = m + sigma sinh(tau), tau evenly spaced: dense (spacing ~ sigma) around m, where
    w'' lives, geometrically sparser far out where the smile is nearly linear. Far out, g can
    still dip sharply where w is small: there g ~ q^2 - w'^2/(4w) with q = 1 - k w'/(2w), and the
    dip sits at a root of q. So the cells where q changes sign (first and last) and the cell of
    the lowest g (both sides) are resampled finely; a dip between grid points is still seen.
    """
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    s, mm = sigma[:, None], m[:, None]
    tau_lo = np.arcsinh((bounds[:, :1] - mm) / s)
    tau_hi = np.arcsinh((bounds[:, 1:] - mm) / s)
    cell = (tau_hi - tau_lo) / (_CHECK_GRID_POINTS - 1)
    a, u, v = p[:, 0:1], p[:, 1:2], p[:, 2:3]
    c, d = 0.5 * (u + v), 0.5 * (u - v)
    g, q = _density_on_tau(a, c, d, mm, s, tau_lo + cell * _GRID_INDEX[None, :])
    # The grid minimum as the value at argmin (NaN-propagating like min, and cheaper on short rows).
    lowest = np.argmin(g, axis=1)
    arbitrage = g[np.arange(len(g)), lowest] < _FIT_DENSITY_MARGIN
    # Only the candidates the grid passed need the resampling (the answer is already True for
    # the others); selecting them costs more than it saves unless many failed.
    rest = np.flatnonzero(~arbitrage)
    if rest.size == 0:
        return arbitrage
    if rest.size < 0.75 * len(p):
        q, lowest, tau_lo, cell, a, c, d, mm, s = (x[rest] for x in (q, lowest, tau_lo, cell, a, c, d, mm, s))
    else:
        rest = slice(None)
    positive = q > 0
    flips = positive[:, 1:] != positive[:, :-1]
    first_flip = np.argmax(flips, axis=1)
    last_flip = _CHECK_GRID_POINTS - 2 - np.argmax(flips[:, ::-1], axis=1)
    # Windows of one cell each (starting at grid index j): both cells beside the lowest point,
    # and the first and last cells where q changes sign; resampled together.
    starts = np.clip(np.stack([lowest - 1, lowest, first_flip, last_flip], axis=1), 0, _CHECK_GRID_POINTS - 2)
    starts = starts.astype(float)[:, :, None]  # (R, 4, 1)
    tau_fine = (tau_lo[:, :, None] + cell[:, :, None] * (starts + _REFINE_FRACTIONS[None, None, :])).reshape(len(q), -1)
    g_fine, _ = _density_on_tau(a, c, d, mm, s, tau_fine)
    arbitrage[rest] |= g_fine[np.arange(len(g_fine)), np.argmin(g_fine, axis=1)] < _FIT_DENSITY_MARGIN
    return arbitrage


def _newton_steps(f: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps from the centres of stencils f (R, 6) taken at centre + step * _STENCIL.
    Returns (steps (R, 2), valid (R,)); invalid where the finite-difference Hessian is not
    positive definite or a value is not finite."""
    hm, hs = step[:, 0], step[:, 1]
    f0, fmp, fmm, fsp, fsm, fd = f[:, 0], f[:, 1], f[:, 2], f[:, 3], f[:, 4], f[:, 5]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        grad_m = (fmp - fmm) / (2 * hm)
        grad_s = (fsp - fsm) / (2 * hs)
        h_mm = (fmp - 2 * f0 + fmm) / hm**2
        h_ss = (fsp - 2 * f0 + fsm) / hs**2
        h_ms = (fd - fmp - fsp + f0) / (hm * hs)
        det = h_mm * h_ss - h_ms * h_ms
        newton = -np.stack([h_ss * grad_m - h_ms * grad_s, h_mm * grad_s - h_ms * grad_m], axis=1) / det[:, None]
    valid = np.isfinite(det) & (h_mm > 0) & (det > 0) & _rows_all(np.isfinite(newton))
    return np.where(valid[:, None], newton, 0.0), valid


def _prepare(slices: Sequence[SmileData]) -> tuple[list, list[SVIFit | None]]:
    """Validate and clean every slice; returns the cleaned (k, w, weights, t) per slice and an
    early SVIFit for those that cannot be fitted (None for the others)."""
    cleaned, early = [], []
    nan = float("nan")
    for s in slices:
        k = np.asarray(s.k, dtype=float).ravel()
        w = np.asarray(s.w, dtype=float).ravel()
        if k.shape != w.shape:
            raise ValueError(f"k has {k.size} points, w has {w.size}")
        weights = np.ones_like(k) if s.weights is None else np.asarray(s.weights, dtype=float).ravel()
        if weights.shape != k.shape:
            raise ValueError(f"weights has {weights.size} points, k has {k.size}")
        if s.t is not None and not s.t > 0:
            raise ValueError(f"t must be positive years, got {s.t}")
        keep = np.isfinite(k) & np.isfinite(w) & np.isfinite(weights) & (w > 0) & (weights > 0)
        k, w, weights = k[keep], w[keep], weights[keep]
        cleaned.append((k, w, weights, s.t))
        if k.size < 5:
            early.append(SVIFit(None, nan, nan, int(k.size), False, f"need at least 5 valid points, have {k.size}"))
        elif not k.max() > k.min():
            early.append(SVIFit(None, nan, nan, int(k.size), False, "all points have the same log-moneyness"))
        else:
            early.append(None)
    return cleaned, early


def _local_search(batch: _Batch, start: np.ndarray, ok: np.ndarray, step: np.ndarray, tol: np.ndarray,
                  ls_floor: np.ndarray, max_iterations: int):
    """Minimize each expiry's reduced objective over (m, log sigma) from ``start`` (E, 2).

    Newton steps from 6-point finite-difference stencils (one vectorized `_inner` call per step for
    all expiries still searching); where the quadratic model fails (kinks where the active set
    changes, +inf where a candidate has arbitrage) or its point turns out worse than one already
    seen, the search restarts from the best point with a halved stencil. An expiry stops when the
    Newton step or the stencil is below ``tol``, or when its objective has improved by less than
    a relative 1e-6 over the last few steps. Returns (objective, (a, c, d), (m, log sigma)) of the
    best point found; objective +inf where ``ok`` is False or nothing arbitrage-free was found.
    """
    n_exp = len(start)
    # The start is the first stencil's centre: nothing is known about it before that.
    best_obj, best_acd, best_pt = np.full(n_exp, np.inf), np.zeros((n_exp, 3)), start.copy()
    center, step = start.copy(), step.copy()
    noise = 1e-13 * batch.c
    active = ok.copy()
    history = [best_obj.copy()]
    for _ in range(max_iterations):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        points = center[idx, None, :] + step[idx, None, :] * _STENCIL[None, :, :]  # (A, 6, 2)
        points[:, :, 1] = np.maximum(points[:, :, 1], ls_floor[idx, None])
        acd, obj = _inner(batch, idx, points[:, :, 0], np.exp(points[:, :, 1]))
        center_was_best = obj[:, 0] <= best_obj[idx] + noise[idx]
        j = np.argmin(obj, axis=1)
        a_rows = np.arange(idx.size)
        moved = obj[a_rows, j] < best_obj[idx] - noise[idx]
        upd = idx[moved]
        best_obj[upd] = obj[a_rows, j][moved]
        best_acd[upd] = acd[a_rows, j][moved]
        best_pt[upd] = points[a_rows, j][moved]

        newton, valid = _newton_steps(obj, step[idx])
        valid &= center_was_best
        converged = valid & _rows_all(np.abs(newton) < tol[idx])
        newton = np.clip(newton, -4.0 * step[idx], 4.0 * step[idx])  # trust region: the model is local
        go = valid & ~converged
        gi = idx[go]
        center[gi] = center[gi] + newton[go]
        step[gi] = np.clip(np.abs(newton[go]), tol[gi], 2.0 * step[gi])
        # Failed model, or the last Newton point was worse than one already seen: continue from
        # the best point so far, with a tighter stencil unless the stencil itself just improved.
        fb = idx[~valid]
        center[fb] = best_pt[fb]
        shrink = ~valid & ~(moved & center_was_best)
        step[idx[shrink]] *= 0.5
        # A Newton point that came out worse: the trust region (4 steps) was too generous, so
        # shrink it well below the step just taken (else the same step is retried forever).
        overshot = idx[~center_was_best]
        step[overshot] *= 0.25
        done = converged | (~valid & _rows_all(step[idx] < tol[idx]))
        history.append(best_obj.copy())
        if len(history) > _STALL_WINDOW:
            earlier = history[-1 - _STALL_WINDOW][idx]
            done |= best_obj[idx] >= earlier * (1.0 - _STALL_RELATIVE_GAIN)
        active[idx[done]] = False
    return best_obj, best_acd, best_pt


def fit_svi_many(slices: Sequence[SmileData]) -> list[SVIFit]:
    """Fit raw SVI to each slice (one expiry each), all expiries in the same vectorized passes.

    Points with a non-finite k, w or weight, or w <= 0, or weight <= 0, are dropped. A slice
    with fewer than 5 remaining points, or a single k, or no arbitrage-free SVI at all, gets
    ``success=False`` with a message (never an exception for bad data; malformed shapes or a
    non-positive t raise ValueError).
    """
    cleaned, results = _prepare(slices)
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return list(results)
    full = [cleaned[i] for i in todo]
    batch, spans = _make_batch(full)
    # The coarse grid only has to find the right basin and the local search only has to get
    # close, so both run on thinned copies of the slices; a short polish on all points follows.
    # (Where no slice needed thinning, the thinned batch is the full one: the same arrays.)
    coarse_batch = _thinned_batch(full, batch, _COARSE_MAX_POINTS)
    search_batch = _thinned_batch(full, batch, _SEARCH_MAX_POINTS)
    n_exp = len(todo)

    # Coarse grid over (m, log sigma), per expiry.
    k_lo = np.array([cleaned[i][0].min() for i in todo])
    frac_m = np.linspace(-0.5, 1.5, _COARSE_M_POINTS)
    frac_s = np.linspace(np.log(_SIGMA_FLOOR_FRACTION), np.log(_SIGMA_CEILING_FRACTION), _COARSE_SIGMA_POINTS)
    grid_m = k_lo[:, None] + spans[:, None] * frac_m[None, :]  # (E, Gm)
    grid_ls = np.log(spans)[:, None] + frac_s[None, :]  # (E, Gs)
    mm = np.repeat(grid_m, _COARSE_SIGMA_POINTS, axis=1)
    ls = np.tile(grid_ls, (1, _COARSE_M_POINTS))
    rows = np.arange(n_exp)
    obj = _coarse_objective(coarse_batch, mm, np.exp(ls))
    # Nearly parabolic smiles (sigma comparable to the quoted span) leave several coarse cells
    # almost equally good, in different basins: search from the best few (all expiries at once,
    # as one batch), keep the best result per expiry.
    n_starts = min(_SEARCH_STARTS, obj.shape[1])
    best_cells = np.argsort(obj, axis=1)[:, :n_starts]  # (E, S)
    cell = best_cells.T.reshape(-1)  # start s of expiry e at s * E + e
    rep = np.tile(rows, n_starts)
    start = np.stack([mm[rep, cell], ls[rep, cell]], axis=1)
    start_ok = np.isfinite(obj[rep, cell])
    if n_starts > 1:
        search_batch = _tile_batch(search_batch, n_starts)  # start s of expiry e at row s * E + e
    step = 0.5 * np.stack([spans * (frac_m[1] - frac_m[0]), np.full(n_exp, frac_s[1] - frac_s[0])], axis=1)
    tol = np.stack([1e-5 * spans, np.full(n_exp, 1e-5)], axis=1)
    ls_floor = np.log(_SIGMA_FLOOR_FRACTION * spans)
    # A local search can stall on a kink (the no-arbitrage boundary, where the optimum often
    # lies): restart it from its best point with the initial stencil until a restart gains
    # nothing.
    searching = start_ok.copy()
    search_obj = np.full(n_exp * n_starts, np.inf)
    for _ in range(_SEARCH_RESTARTS):
        found_obj, _, found = _local_search(search_batch, start, searching, np.tile(step, (n_starts, 1)),
                                            np.tile(tol, (n_starts, 1)), np.tile(ls_floor, n_starts),
                                            _MAX_SEARCH_ITERATIONS)
        improved = searching & (found_obj < search_obj * (1.0 - _STALL_RELATIVE_GAIN))
        start[improved], search_obj[improved] = found[improved], found_obj[improved]
        searching = improved
        if not searching.any():
            break
    pick = np.argmin(search_obj.reshape(n_starts, n_exp), axis=0) * n_exp + rows  # best start per expiry
    start, start_ok = start[pick], start_ok[pick]
    best_obj, best_acd, best_pt = _local_search(
        batch, start, start_ok, np.maximum(16.0 * tol, 0.01 * step), tol, ls_floor, _MAX_POLISH_ITERATIONS)

    best_acd = _verify_and_repair(batch, best_obj, best_acd, best_pt)

    for e, slot in enumerate(todo):
        k, w, _, t = cleaned[slot]
        check_range = (float(batch.check_range[e, 0]), float(batch.check_range[e, 1]))
        if not np.isfinite(best_obj[e]):
            results[slot] = SVIFit(None, float("nan"), float("nan"), int(k.size), False,
                                   "no arbitrage-free SVI smile fits these points", check_range)
            continue
        a, c, d = best_acd[e]
        m_fit, sigma_fit = float(best_pt[e, 0]), float(np.exp(best_pt[e, 1]))
        params = SVIParams(a=float(a), b=float(c / sigma_fit), rho=float(np.clip(d / c, -1, 1)) if c > 0 else 0.0,
                           m=m_fit, sigma=sigma_fit)
        fitted = params.total_variance(k)
        rmse_w = float(np.sqrt(np.mean((fitted - w) ** 2)))
        if t is not None:
            rmse_vol = float(100.0 * np.sqrt(np.mean((np.sqrt(np.maximum(fitted, 0.0) / t) - np.sqrt(w / t)) ** 2)))
        else:
            rmse_vol = float("nan")
        if not np.isfinite(best_acd[e]).all():
            results[slot] = SVIFit(None, float("nan"), float("nan"), int(k.size), False,
                                   "the fitted smile failed the dense butterfly check and could not be repaired",
                                   check_range)
            continue
        results[slot] = SVIFit(params, rmse_vol, rmse_w, int(k.size), True, "ok", check_range)
    return list(results)


def _verify_and_repair(batch: _Batch, best_obj, best_acd, best_pt) -> np.ndarray:
    """Check each fit's density on a dense uniform grid (the search checks a sparse one); where
    it dips below zero, move (a, c, d) toward the a >= 0 solution at the same (m, sigma) until it
    passes. (a, c, d) of NaN marks a fit that could not be repaired."""
    acd = best_acd.copy()
    fitted = np.flatnonzero(np.isfinite(best_obj))
    if fitted.size == 0:
        return acd
    p = _to_auv(acd[fitted])
    m, sigma = best_pt[fitted, 0], np.exp(best_pt[fitted, 1])
    bad = _dense_arbitrage(p, m, sigma, batch.check_range[fitted])
    for i in np.flatnonzero(bad):
        e = fitted[i]
        gram, rhs, const, lower, upper = _normal_equations(batch, np.array([e]), m[i:i + 1, None], sigma[i:i + 1, None])
        lower[:, 0] = 0.0
        p_b = _solve_bounded(gram, rhs, const, lower, upper)[0]
        lam = _REPAIR_STEPS[:, None]
        trials = p_b[None, :] + lam * (p[i] - p_b)[None, :]
        ok = ~_dense_arbitrage(trials, np.full(len(trials), m[i]), np.full(len(trials), sigma[i]),
                               np.repeat(batch.check_range[e:e + 1], len(trials), axis=0))
        acd[e] = _to_acd(trials[np.argmax(ok)]) if ok.any() else np.nan
    return acd


def _to_auv(acd: np.ndarray) -> np.ndarray:
    a, c, d = acd[..., 0], acd[..., 1], acd[..., 2]
    return np.stack([a, c + d, c - d], axis=-1)


def _to_acd(auv: np.ndarray) -> np.ndarray:
    a, u, v = auv[..., 0], auv[..., 1], auv[..., 2]
    return np.stack([a, 0.5 * (u + v), 0.5 * (u - v)], axis=-1)


def _dense_arbitrage(p: np.ndarray, m: np.ndarray, sigma: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """g < -tolerance (or w <= 0) anywhere on VERIFY_GRID_POINTS uniform points in k."""
    k = bounds[:, :1] + (bounds[:, 1:] - bounds[:, :1]) * np.linspace(0.0, 1.0, VERIFY_GRID_POINTS)[None, :]
    s = sigma[:, None]
    tau = np.arcsinh((k - m[:, None]) / s)
    a, u, v = p[:, 0:1], p[:, 1:2], p[:, 2:3]
    g, _ = _density_on_tau(a, 0.5 * (u + v), 0.5 * (u - v), m[:, None], s, tau)
    return np.any(~(g >= -_BUTTERFLY_TOLERANCE), axis=1)


def _thin(slice_: tuple, max_points: int) -> tuple:
    """At most ``max_points`` of a slice, evenly spread over its k-ordered points."""
    k, w, weights, t = slice_
    if len(k) <= max_points:
        return slice_
    order = np.argsort(k)[np.linspace(0, len(k) - 1, max_points).round().astype(int)]
    return k[order], w[order], weights[order], t


def _thinned_batch(full: list, full_batch: _Batch, max_points: int) -> _Batch:
    thinned = [_thin(slice_, max_points) for slice_ in full]
    if all(t is f for t, f in zip(thinned, full)):
        return full_batch
    return _make_batch(thinned)[0]


def _tile_batch(batch: _Batch, reps: int) -> _Batch:
    """The batch's expiries repeated ``reps`` times (row s * E + e is expiry e): the arrays
    `_make_batch` gives for the repeated list, without building them again."""
    return _Batch(**{name: np.tile(value, (reps,) + (1,) * (value.ndim - 1))
                     for name, value in vars(batch).items()})


def _make_batch(cleaned: list) -> tuple[_Batch, np.ndarray]:
    n_exp = len(cleaned)
    n_max = max(len(c[0]) for c in cleaned)
    k = np.zeros((n_exp, n_max))
    w = np.zeros((n_exp, n_max))
    weights = np.zeros((n_exp, n_max))
    for e, (ke, we, wte, _) in enumerate(cleaned):
        n = len(ke)
        k[e, :n], w[e, :n] = ke, we
        weights[e, :n] = wte / wte.mean()  # scale-free: keeps the sums well conditioned
        k[e, n:] = ke[0]  # padding: weight 0, any finite k
    k_min = np.array([c[0].min() for c in cleaned])
    k_max = np.array([c[0].max() for c in cleaned])
    spans = k_max - k_min
    ww = weights * w
    lo = np.minimum(k_min - CHECK_RANGE_MARGIN * spans, -CHECK_RANGE_FLOOR)
    hi = np.maximum(k_max + CHECK_RANGE_MARGIN * spans, CHECK_RANGE_FLOOR)
    batch = _Batch(
        k=k, z_weights=np.stack([weights, ww, weights * k], axis=2),
        s0=weights.sum(1), s1=(weights * k).sum(1), s2=(weights * k * k).sum(1),
        r0=ww.sum(1), r1=(ww * k).sum(1), c=(ww * w).sum(1),
        w_max=np.array([c[1].max() for c in cleaned]), check_range=np.stack([lo, hi], axis=1),
    )
    return batch, spans


def fit_svi(k: np.ndarray, w: np.ndarray, weights: np.ndarray | None = None, t: float | None = None) -> SVIFit:
    """Fit raw SVI to total variances ``w`` at log-moneyness ``k`` (one expiry).

    ``weights`` multiply the *squared* total-variance residuals (default 1). To fit in vol space
    with quote-spread weights use ``weights = vol_weight / (4 * w * t)`` (a vol error dv moves
    w by about 2 sqrt(w t) dv) — `tools.surface` does this. ``t`` (years) is only used to report
    the RMSE in vol points. See `fit_svi_many` for the failure cases.
    """
    return fit_svi_many([SmileData(k=k, w=w, weights=weights, t=t)])[0]


# --------------------------------------------------------------------------------------------
# Inner problem: exact box-constrained least squares, vectorized over problems.
# --------------------------------------------------------------------------------------------

# Faces of the box [0, hi]^3 that need a solve. Facets: coordinate i at bound b (0 = lower,
# 1 = upper), coordinates j, l free. Edges: coordinate i free, j and l at bounds jb, lb; the 1-D
# minimizer clipped to the edge is the exact minimizer over the closed edge, so edges also
# cover the 8 vertices.
_FACET_I, _FACET_J, _FACET_L, _FACET_B = (
    np.array(col) for col in zip(*[
        (i, *[x for x in range(3) if x != i], b) for i in range(3) for b in (0, 1)
    ])
)
_EDGE_I, _EDGE_J, _EDGE_L, _EDGE_JB, _EDGE_LB = (
    np.array(col) for col in zip(*[
        (i, *[x for x in range(3) if x != i], jb, lb) for i in range(3) for jb in (0, 1) for lb in (0, 1)
    ])
)


def _solve_box_lsq(
    gram: np.ndarray, rhs: np.ndarray, const: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Minimize p'Gp - 2 r'p + const over 0 <= p <= upper, exactly, for a batch of problems.

    gram (G,3,3) positive semi-definite, rhs (G,3), upper (G,3). The optimum of a convex QP on a
    box lies in the relative interior of some face, where it equals the unconstrained minimizer
    over that face's free coordinates; so the best *feasible* candidate among the interior
    solution, the 6 facet solutions and the 12 clipped edge solutions is the optimum. All
    candidates come from closed-form (Cramer) solves vectorized over problems and faces.
    Returns (p (G,3), objective (G,)).
    """
    n = gram.shape[0]
    g = gram
    rows = np.arange(n)[:, None]
    bounds = np.stack([np.zeros_like(upper), upper], axis=-1)  # (G,3,2)

    with np.errstate(divide="ignore", invalid="ignore"):
        # Interior: 3x3 solve by the adjugate of the symmetric Gram matrix.
        a, b, c = g[:, 0, 0], g[:, 0, 1], g[:, 0, 2]
        e, f, i_ = g[:, 1, 1], g[:, 1, 2], g[:, 2, 2]
        adj = np.stack([
            e * i_ - f * f, c * f - b * i_, b * f - c * e,
            c * f - b * i_, a * i_ - c * c, b * c - a * f,
            b * f - c * e, b * c - a * f, a * e - b * b,
        ], axis=1).reshape(n, 3, 3)
        det = a * adj[:, 0, 0] + b * adj[:, 1, 0] + c * adj[:, 2, 0]
        interior = (adj @ rhs[:, :, None])[:, :, 0] / det[:, None]
        interior_ok = _rows_all((interior >= 0) & (interior <= upper))

        # Facets: coordinate I at a bound, J and L from a 2x2 solve.
        xi = bounds[rows, _FACET_I, _FACET_B]  # (G,6)
        rj = rhs[:, _FACET_J] - g[:, _FACET_J, _FACET_I] * xi
        rl = rhs[:, _FACET_L] - g[:, _FACET_L, _FACET_I] * xi
        gjj, gjl, gll = g[:, _FACET_J, _FACET_J], g[:, _FACET_J, _FACET_L], g[:, _FACET_L, _FACET_L]
        det2 = gjj * gll - gjl * gjl
        pj = (gll * rj - gjl * rl) / det2
        pl = (gjj * rl - gjl * rj) / det2
        facet = np.empty((n, 6, 3))
        facet[:, np.arange(6), _FACET_I] = xi
        facet[:, np.arange(6), _FACET_J] = pj
        facet[:, np.arange(6), _FACET_L] = pl
        uj, ul = upper[:, _FACET_J], upper[:, _FACET_L]
        facet_ok = (pj >= 0) & (pj <= uj) & (pl >= 0) & (pl <= ul)

        # Edges: coordinate I free (clipped to its bounds), J and L at bounds. G_ii > 0 always
        # (every basis function is positive), so the division is safe.
        xj = bounds[rows, _EDGE_J, _EDGE_JB]  # (G,12)
        xl = bounds[rows, _EDGE_L, _EDGE_LB]
        pi = (rhs[:, _EDGE_I] - g[:, _EDGE_I, _EDGE_J] * xj - g[:, _EDGE_I, _EDGE_L] * xl) / g[:, _EDGE_I, _EDGE_I]
        pi = np.clip(pi, 0.0, upper[:, _EDGE_I])
        edge = np.empty((n, 12, 3))
        edge[:, np.arange(12), _EDGE_I] = pi
        edge[:, np.arange(12), _EDGE_J] = xj
        edge[:, np.arange(12), _EDGE_L] = xl

    cand = np.concatenate([interior[:, None, :], facet, edge], axis=1)  # (G,19,3)
    ok = np.concatenate([interior_ok[:, None], facet_ok, np.ones((n, 12), dtype=bool)], axis=1)
    ok &= np.all(np.isfinite(cand), axis=2)
    cand = np.where(ok[:, :, None], cand, 0.0)
    quad = np.sum((cand @ g) * cand, axis=2)
    obj = quad - 2.0 * np.sum(cand * rhs[:, None, :], axis=2) + const[:, None]
    obj = np.where(ok, obj, np.inf)
    best = np.argmin(obj, axis=1)
    return cand[rows[:, 0], best], obj[rows[:, 0], best]



# --------------------------------------------------------------------------------------------
# No-arbitrage checks.
# --------------------------------------------------------------------------------------------


def butterfly_density(params: SVIParams, k: np.ndarray | float) -> np.ndarray:
    """Gatheral's g(k) = (1 - k w'/(2w))^2 - (w'^2/4)(1/w + 1/4) + w''/2.

    The risk-neutral density of ln(S_T/F) is g(k)/sqrt(2 pi w) * exp(-d2^2/2), so g(k) < 0 at some
    k is butterfly arbitrage there. NaN where w <= 0 (no valid smile at all).
    """
    w, dw, d2w = params.derivatives(k)
    kk = np.asarray(k, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (1.0 - kk * dw / (2.0 * w)) ** 2 - 0.25 * dw * dw * (1.0 / w + 0.25) + 0.5 * d2w
    return np.where(w > 0, g, np.nan)


def butterfly_violations(params: SVIParams, k: np.ndarray) -> np.ndarray:
    """The points of ``k`` where g(k) < 0 or the total variance is not positive."""
    k = np.asarray(k, dtype=float)
    g = butterfly_density(params, k)
    return k[~(g >= -_BUTTERFLY_TOLERANCE)]


def has_butterfly_arbitrage(
    params: SVIParams, k_range: tuple[float, float] = (-1.5, 1.5), n_points: int = 401
) -> bool:
    """True when g(k) < 0 (or w <= 0) anywhere on an ``n_points`` grid over ``k_range``."""
    lo, hi = k_range
    if not hi > lo:
        raise ValueError(f"k_range must be increasing, got {k_range}")
    return butterfly_violations(params, np.linspace(lo, hi, n_points)).size > 0


class SmileSlice(Protocol):
    """Anything carrying an expiry's year fraction and its SVI parameters."""

    t: float
    params: SVIParams


@dataclass(frozen=True)
class CalendarViolation:
    """Total variance decreases from expiry ``earlier`` to ``later`` (indices into the slices
    given, sorted by t) at log-moneyness ``k``; ``worst_shortfall`` = max of w_earlier - w_later
    (total-variance units)."""

    earlier: int
    later: int
    t_earlier: float
    t_later: float
    k: np.ndarray
    worst_shortfall: float


def calendar_violations(
    slices: Sequence[SmileSlice],
    k_grid: np.ndarray | None = None,
    tolerance: float = 1e-8,
) -> list[CalendarViolation]:
    """Check total variance is non-decreasing in t at every k of ``k_grid`` (default -0.5..0.5).

    Compares each pair of consecutive expiries (by t; with no calendar arbitrage between
    neighbours there is none between any pair). Indices in the result refer to ``slices`` as
    given. ``tolerance`` absorbs floating-point noise (total-variance units).
    """
    grid = np.linspace(-0.5, 0.5, 201) if k_grid is None else np.asarray(k_grid, dtype=float)
    order = sorted(range(len(slices)), key=lambda i: slices[i].t)
    found: list[CalendarViolation] = []
    for i, j in zip(order[:-1], order[1:]):
        shortfall = slices[i].params.total_variance(grid) - slices[j].params.total_variance(grid)
        bad = shortfall > tolerance
        if bad.any():
            found.append(
                CalendarViolation(
                    earlier=i, later=j, t_earlier=float(slices[i].t), t_later=float(slices[j].t),
                    k=grid[bad], worst_shortfall=float(shortfall.max()),
                )
            )
    return found
