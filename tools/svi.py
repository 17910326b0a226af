"""Raw SVI smiles per expiry: fit, butterfly (density) check and calendar check.

Conventions
-----------
* log-moneyness ``k = ln(K / F)`` with ``F`` the expiry's forward;
* total implied variance ``w = sigma_impl**2 * t`` (``t`` in years);
* raw SVI (Gatheral 2004): ``w(k) = a + b * (rho * (k - m) + sqrt((k - m)**2 + sigma**2))``.

The fit is the quasi-explicit method of Zeliade (De Marco & Martini, 2009). With
``y = (k - m) / sigma`` the smile reads ``w = a + d*y + c*sqrt(y**2 + 1)`` with ``c = b*sigma`` and
``d = rho*b*sigma``: for fixed ``(m, sigma)`` it is linear in ``(a, d, c)``. Zeliade's domain
``0 <= c <= 4 sigma, |d| <= c, |d| <= 4 sigma - c, 0 <= a <= max(w)`` is a diamond in ``(c, d)``;
in the rotated coordinates ``u = c + d, v = c - d`` it is the box ``[0, 4 sigma]**2``, so the inner
problem is a 3-variable *box-constrained* least squares, solved exactly by enumerating which
bounds are active (27 patterns). The outer search over ``(m, sigma)`` is a vectorized coarse
grid followed by zooming grids around the best cell — no per-point Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

# Zeliade's slope cap: b * (1 + |rho|) <= 4 (Roger Lee's moment formula gives 2 per wing for w'(k)
# asymptotically; 4 is the conventional, looser box used by the quasi-explicit method).
_SLOPE_CAP = 4.0
# Smallest sigma searched: below this the smile is a kinked "V" that no real chain shows.
_SIGMA_MIN = 1e-4
_BUTTERFLY_TOLERANCE = 1e-9
# Offsets (in steps) of the compass search's neighbours of the current (m, log sigma).
_EYE3 = np.eye(3)
_ALL_FREE = np.zeros(3, dtype=np.int64)
_STENCIL = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=float)


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
        """Black implied vol (annualized decimal, 0.2 = 20%) at log-moneyness k for expiry t years.

        NaN where the smile's total variance is negative (an invalid parameter set there)."""
        if not t > 0:
            raise ValueError(f"t must be positive years, got {t}")
        w = self.total_variance(k)
        with np.errstate(invalid="ignore"):
            return np.where(w >= 0, np.sqrt(np.maximum(w, 0.0) / t), np.nan)

    def derivatives(self, k: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(w, dw/dk, d2w/dk2) at k."""
        x = np.asarray(k, dtype=float) - self.m
        root = np.sqrt(x * x + self.sigma**2)
        w = self.a + self.b * (self.rho * x + root)
        dw = self.b * (self.rho + x / root)
        d2w = self.b * self.sigma**2 / root**3
        return w, dw, d2w

    @property
    def min_total_variance(self) -> float:
        """The smile's minimum, a + b*sigma*sqrt(1 - rho^2) (must be >= 0 for a valid smile)."""
        return self.a + self.b * self.sigma * np.sqrt(max(0.0, 1.0 - self.rho**2))


@dataclass(frozen=True)
class SVIFit:
    """Result of `fit_svi`.

    ``rmse_vol_points``: weighted-free root-mean-square error of the fitted implied vol against
    the input points, in vol points (1.0 = one percentage point of vol); NaN when ``t`` was not
    given. ``rmse_total_variance``: the same in total-variance units. ``success`` is False (with
    ``message`` saying why, and ``params`` None) when the data cannot be fitted.
    """

    params: SVIParams | None
    rmse_vol_points: float
    rmse_total_variance: float
    n_points: int
    success: bool
    message: str


# --------------------------------------------------------------------------------------------
# Inner problem: exact box-constrained least squares in (a, u, v), vectorized over (m, sigma).
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
        interior_ok = np.all((interior >= 0) & (interior <= upper), axis=1)

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


def _solve_spd(a: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Closed-form solve of a batch of small symmetric systems a (G,f,f) p = r (G,f), f <= 3.
    Singular systems give non-finite entries (rejected by the callers' feasibility tests)."""
    f = a.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        if f == 1:
            return r / a[:, 0, :]
        if f == 2:
            det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] ** 2
            return np.stack([
                a[:, 1, 1] * r[:, 0] - a[:, 0, 1] * r[:, 1],
                a[:, 0, 0] * r[:, 1] - a[:, 0, 1] * r[:, 0],
            ], axis=1) / det[:, None]
        g00, g01, g02 = a[:, 0, 0], a[:, 0, 1], a[:, 0, 2]
        g11, g12, g22 = a[:, 1, 1], a[:, 1, 2], a[:, 2, 2]
        c00, c01, c02 = g11 * g22 - g12 * g12, g02 * g12 - g01 * g22, g01 * g12 - g02 * g11
        c11, c12, c22 = g00 * g22 - g02 * g02, g01 * g02 - g00 * g12, g00 * g11 - g01 * g01
        det = g00 * c00 + g01 * c01 + g02 * c02
        r0, r1, r2 = r[:, 0], r[:, 1], r[:, 2]
        return np.stack([
            c00 * r0 + c01 * r1 + c02 * r2,
            c01 * r0 + c11 * r1 + c12 * r2,
            c02 * r0 + c12 * r1 + c22 * r2,
        ], axis=1) / det[:, None]


def _solve_with_active_set(
    gram: np.ndarray, rhs: np.ndarray, upper: np.ndarray, pattern: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Solve every problem with one guessed active set and say where that guess is optimal.

    pattern (3,): 0 = coordinate free, 1 = at its lower bound 0, 2 = at its upper bound. The
    guess is optimal exactly where the KKT conditions hold (the QP is convex): free coordinates
    inside their bounds, and the objective's gradient pushing bound coordinates outward.
    """
    free = np.flatnonzero(pattern == 0)
    p = np.where(pattern == 2, upper, 0.0)
    if free.size:
        r_free = rhs[:, free] - (gram[:, free, :] @ p[:, :, None])[:, :, 0]
        p[:, free] = _solve_spd(gram[:, free[:, None], free[None, :]], r_free)
    half_gradient = (gram @ p[:, :, None])[:, :, 0] - rhs
    slack = 1e-12 * (np.abs(rhs) + 1.0)
    with np.errstate(invalid="ignore"):
        kkt = np.where(
            pattern == 0, (p >= 0) & (p <= upper),
            np.where(pattern == 1, half_gradient >= -slack, half_gradient <= slack),
        )
    return p, np.all(kkt, axis=1)


def _inner_fit(
    k: np.ndarray, w: np.ndarray, weights: np.ndarray, m: np.ndarray, sigma: np.ndarray,
    w_max: float, guess: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each (m, sigma) pair, the best (a, c, d), its weighted squared error and its active
    set (see `_solve_with_active_set`). ``guess`` (3,) is tried first for every pair; the full
    enumeration runs only where it is not optimal."""
    y = (k[None, :] - m[:, None]) / sigma[:, None]  # (G, n)
    # Basis in the rotated coordinates: w = a + u*(z + y)/2 + v*(z - y)/2 with z = sqrt(y^2+1).
    # (z + |y|)(z - |y|) = 1, so the small one of u, v is taken as a reciprocal (no cancellation).
    big = 0.5 * (np.sqrt(y * y + 1.0) + np.abs(y))
    small = 0.25 / big
    positive = y > 0
    u = np.where(positive, big, small)
    v = np.where(positive, small, big)
    weighted_w = weights * w
    total_weight = float(weights.sum())
    g01, g02 = u @ weights, v @ weights
    g11, g22 = (u * u) @ weights, (v * v) @ weights
    g00 = np.full_like(g01, total_weight)
    g12 = np.full_like(g01, 0.25 * total_weight)  # u * v = 1/4 at every point
    gram = np.stack([g00, g01, g02, g01, g11, g12, g02, g12, g22], axis=1).reshape(-1, 3, 3)
    rhs = np.stack([np.full_like(g01, weighted_w.sum()), u @ weighted_w, v @ weighted_w], axis=1)
    const = float(weighted_w @ w)
    upper = np.empty((len(m), 3))
    upper[:, 0] = w_max
    upper[:, 1] = upper[:, 2] = _SLOPE_CAP * sigma
    p, optimal = _solve_with_active_set(gram, rhs, upper, guess)
    if not optimal.all():
        redo = ~optimal
        p[redo], _ = _solve_box_lsq(gram[redo], rhs[redo], np.full(int(redo.sum()), const), upper[redo])
    obj = np.sum(p * ((gram @ p[:, :, None])[:, :, 0] - 2.0 * rhs), axis=1) + const
    pattern = np.where(p <= 0.0, 1, np.where(p >= upper, 2, 0))
    a, u_fit, v_fit = p[:, 0], p[:, 1], p[:, 2]
    return np.column_stack([a, 0.5 * (u_fit + v_fit), 0.5 * (u_fit - v_fit)]), obj, pattern


def _to_params(a: float, c: float, d: float, m: float, sigma: float) -> SVIParams:
    b = c / sigma
    rho = d / c if c > 0 else 0.0
    return SVIParams(a=float(a), b=float(b), rho=float(np.clip(rho, -1.0, 1.0)), m=float(m), sigma=float(sigma))


def _newton_step(f: np.ndarray, step: np.ndarray) -> np.ndarray | None:
    """Newton step from the centre of a 3x3 stencil of objective values f[i, j] taken at
    centre + step * (i - 1, j - 1); None when the finite-difference Hessian is not positive
    definite (no minimum to step to)."""
    grad = np.array([(f[2, 1] - f[0, 1]) / (2 * step[0]), (f[1, 2] - f[1, 0]) / (2 * step[1])])
    h_mm = (f[2, 1] - 2 * f[1, 1] + f[0, 1]) / step[0] ** 2
    h_ss = (f[1, 2] - 2 * f[1, 1] + f[1, 0]) / step[1] ** 2
    h_ms = (f[2, 2] - f[2, 0] - f[0, 2] + f[0, 0]) / (4 * step[0] * step[1])
    det = h_mm * h_ss - h_ms * h_ms
    if not (np.isfinite(det) and h_mm > 0 and det > 0):
        return None
    return -np.array([h_ss * grad[0] - h_ms * grad[1], h_mm * grad[1] - h_ms * grad[0]]) / det


def fit_svi(
    k: np.ndarray,
    w: np.ndarray,
    weights: np.ndarray | None = None,
    t: float | None = None,
    *,
    grid_size: int = 12,
    max_iterations: int = 60,
) -> SVIFit:
    """Fit raw SVI to total variances ``w`` at log-moneyness ``k`` (quasi-explicit method).

    ``weights`` multiply the *squared* total-variance residuals (default: all 1). To fit in vol
    space with quote-spread weighting, pass ``1 / (spread_vol**2 * 4 * w * t)`` — see
    `tools.surface`. ``t`` (years) is only used to report the RMSE in vol points.

    Points with a non-finite k, w or weight, or w < 0, or weight <= 0, are dropped. Fewer than 5
    remaining points, or k all equal, give ``success=False`` (never an exception for bad data).
    """
    k = np.asarray(k, dtype=float).ravel()
    w = np.asarray(w, dtype=float).ravel()
    if k.shape != w.shape:
        raise ValueError(f"k has {k.size} points, w has {w.size}")
    weights = np.ones_like(k) if weights is None else np.asarray(weights, dtype=float).ravel()
    if weights.shape != k.shape:
        raise ValueError(f"weights has {weights.size} points, k has {k.size}")
    if t is not None and not t > 0:
        raise ValueError(f"t must be positive years, got {t}")

    keep = np.isfinite(k) & np.isfinite(w) & np.isfinite(weights) & (w >= 0) & (weights > 0)
    k, w, weights = k[keep], w[keep], weights[keep]
    n = int(k.size)
    nan = float("nan")
    if n < 5:
        return SVIFit(None, nan, nan, n, False, f"need at least 5 valid points, have {n}")
    k_span = float(k.max() - k.min())
    if k_span <= 0:
        return SVIFit(None, nan, nan, n, False, "all points have the same log-moneyness")
    weights = weights / weights.mean()  # scale-free: keeps the Gram matrix well conditioned
    w_max = float(w.max())

    # Coarse grid over (m, log sigma): m across and beyond the data, sigma from a near-kink to a
    # smile much flatter than the data range. Then Newton steps on the reduced objective, with
    # gradient and Hessian from a 3x3 finite-difference stencil (one vectorized solve per step),
    # falling back to a halved compass step whenever the quadratic model does not help.
    m_axis = np.linspace(float(k.min()) - 0.5 * k_span, float(k.max()) + 0.5 * k_span, grid_size)
    ls_axis = np.linspace(np.log(max(_SIGMA_MIN, 1e-3 * k_span)), np.log(2.0 * k_span), grid_size)
    mm, ls = (x.ravel() for x in np.meshgrid(m_axis, ls_axis, indexing="ij"))
    acd, obj, pattern = _inner_fit(k, w, weights, mm, np.exp(ls), w_max, _ALL_FREE)
    i = int(np.argmin(obj))
    best = (float(obj[i]), acd[i], float(mm[i]), float(ls[i]))
    guess = pattern[i]
    center = np.array([mm[i], ls[i]])
    step = 0.5 * np.array([m_axis[1] - m_axis[0], ls_axis[1] - ls_axis[0]])
    tol = np.array([1e-7 * max(k_span, 1e-3), 1e-7])
    ls_floor = np.log(_SIGMA_MIN)
    # Improvements smaller than this are round-off in the weighted sum of squares.
    noise = 1e-13 * float(weights @ (w * w))
    for _ in range(max_iterations):
        points = center + step * _STENCIL
        points[:, 1] = np.maximum(points[:, 1], ls_floor)
        acd, obj, pattern = _inner_fit(k, w, weights, points[:, 0], np.exp(points[:, 1]), w_max, guess)
        center_was_best = obj[4] <= best[0] + noise
        i = int(np.argmin(obj))
        moved = obj[i] < best[0] - noise
        if moved:
            best = (float(obj[i]), acd[i], float(points[i, 0]), float(points[i, 1]))
            guess = pattern[i]
        newton = _newton_step(obj.reshape(3, 3), step) if center_was_best else None
        if newton is not None:
            if np.all(np.abs(newton) < tol):
                break
            newton = np.clip(newton, -4 * step, 4 * step)  # trust region: the model is local
            center = center + newton
            step = np.clip(np.abs(newton), tol, step)
        else:
            # The model failed, or the Newton point was worse than one already seen: continue
            # from the best point so far, with a tighter stencil unless it just improved.
            center = np.array([best[2], best[3]])
            if not moved or not center_was_best:
                step = 0.5 * step
            if np.all(step < tol):
                break

    _, (a, c, d), m_best, ls_best = best
    params = _to_params(a, c, d, m_best, float(np.exp(ls_best)))
    fitted = params.total_variance(k)
    rmse_w = float(np.sqrt(np.mean((fitted - w) ** 2)))
    if t is not None:
        vol_fit = np.sqrt(np.maximum(fitted, 0.0) / t)
        vol_obs = np.sqrt(w / t)
        rmse_vol = float(100.0 * np.sqrt(np.mean((vol_fit - vol_obs) ** 2)))
    else:
        rmse_vol = nan
    return SVIFit(params, rmse_vol, rmse_w, n, True, "ok")


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
