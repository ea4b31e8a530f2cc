"""Curve analysis from the paper: the ScaleRL 4-parameter sigmoid and steps-to-peak ratios.

Sigmoid (paper.md §6, ScaleRL Eq. 1, C = training step):

    R(C) = R0 + (A - R0) / (1 + (C_mid / C) ** B)

fitted by bounded nonlinear least squares (``scipy.optimize.least_squares``) over
(R0, A, log B, log C_mid) with several restarts, keeping the lowest SSE. ``A`` is the asymptote
the paper compares between RL and FST; per the paper the fit uses per-checkpoint validation
accuracy (mean@4), not the running max.

As in ScaleRL, A is only bounded by the reward range [0, 1], not below by the best observed
value: a lower bound of max(R) biases A up by the single luckiest (noisiest) evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.optimize import least_squares


@dataclasses.dataclass(frozen=True)
class SigmoidFit:
    r0: float
    a: float  # asymptote
    b: float  # scaling exponent
    c_mid: float  # step at half the gain
    sse: float
    a_ci: tuple[float, float] | None = None  # bootstrap 95% interval of A, if requested

    def __call__(self, c: np.ndarray | float) -> np.ndarray:
        return sigmoid(np.asarray(c, dtype=np.float64), self.r0, self.a, self.b, self.c_mid)


def sigmoid(c: np.ndarray, r0: float, a: float, b: float, c_mid: float) -> np.ndarray:
    c = np.maximum(np.asarray(c, dtype=np.float64), 1e-12)
    return r0 + (a - r0) / (1.0 + (c_mid / c) ** b)


def _validate(steps: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(steps, dtype=np.float64)
    r = np.asarray(values, dtype=np.float64)
    if c.shape != r.shape or c.ndim != 1:
        raise ValueError(
            f"steps and values must be 1-D of equal length, got {c.shape} and {r.shape}"
        )
    keep = c >= 1  # C = 0 makes (C_mid / C) undefined; the paper's fits start at step >= 1
    c, r = c[keep], r[keep]
    if len(c) < 5:
        raise ValueError(
            f"a 4-parameter sigmoid needs at least 5 points with step >= 1, got {len(c)}; "
            "evaluate more often (lower eval.every_cycles) or run longer"
        )
    if not np.all(np.isfinite(r)):
        raise ValueError("values contain NaN/Inf; drop failed evaluations before fitting")
    return c, r


def fit_sigmoid(
    steps: Sequence[float],
    values: Sequence[float],
    *,
    restarts: int = 16,
    bootstrap: int = 0,
    seed: int = 0,
) -> SigmoidFit:
    """Fits R(C); bounds: R0 in [0,1], A in [0,1] (no max(R) floor, see the module docstring),
    B in [0.1,10], C_mid in [min C, 100 max C]. ``bootstrap`` > 0 adds a 95% interval for A (resampled points)."""
    c, r = _validate(steps, values)
    best = _fit(c, r, restarts, np.random.default_rng(seed))
    ci = None
    if bootstrap:
        rng = np.random.default_rng(seed + 1)
        a_samples = []
        for _ in range(bootstrap):
            idx = np.sort(rng.integers(0, len(c), len(c)))
            if len(np.unique(c[idx])) < 4:
                continue
            a_samples.append(_fit(c[idx], r[idx], max(4, restarts // 4), rng).a)
        if a_samples:
            ci = (float(np.percentile(a_samples, 2.5)), float(np.percentile(a_samples, 97.5)))
    return dataclasses.replace(best, a_ci=ci)


def _fit(c: np.ndarray, r: np.ndarray, restarts: int, rng: np.random.Generator) -> SigmoidFit:
    lo = np.array([0.0, 0.0, np.log(0.1), np.log(c.min())])
    hi = np.array([1.0, 1.0, np.log(10.0), np.log(100.0 * c.max())])

    def resid(p):
        return sigmoid(c, p[0], p[1], np.exp(p[2]), np.exp(p[3])) - r

    tail = float(np.mean(r[-max(2, len(r) // 5) :]))  # the late plateau, a robust A guess
    starts = [
        np.array([r[0], min(r.max() + 0.02, 1.0), 0.0, np.log(np.median(c))]),
        np.array([r[0], tail, 0.0, np.log(np.median(c))]),
    ]
    for _ in range(max(restarts - 1, 0)):
        starts.append(
            np.array(
                [
                    rng.uniform(0, max(r.min(), 1e-3)),
                    rng.uniform(max(r.min(), 0.0), 1.0),
                    rng.uniform(np.log(0.2), np.log(5.0)),
                    rng.uniform(lo[3], np.log(10.0 * c.max())),
                ]
            )
        )
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        sol = least_squares(resid, x0, bounds=(lo, hi), method="trf")
        sse = float(np.sum(sol.fun**2))
        if best is None or sse < best[0]:
            best = (sse, sol.x)
    sse, p = best
    return SigmoidFit(float(p[0]), float(p[1]), float(np.exp(p[2])), float(np.exp(p[3])), sse)


def running_max(values: Sequence[float]) -> np.ndarray:
    return np.maximum.accumulate(np.asarray(values, dtype=np.float64))


def first_step_reaching(steps: Sequence[float], values: Sequence[float], target: float) -> float:
    """First step whose running max reaches ``target`` (NaN if never)."""
    steps = np.asarray(steps, dtype=np.float64)
    hit = np.nonzero(running_max(values) >= target)[0]
    return float(steps[hit[0]]) if len(hit) else float("nan")


def steps_to_peak_ratio(
    ref_steps: Sequence[float],
    ref_values: Sequence[float],
    steps: Sequence[float],
    values: Sequence[float],
) -> dict[str, float]:
    """The paper's data-efficiency number (Fig. 2): steps the reference (RL) needs to reach its
    running peak ÷ steps the other method (FST) needs to reach that same value."""
    if len(ref_values) == 0 or len(values) == 0:
        raise ValueError("both runs need validation points to compare")
    peak = float(np.max(ref_values))
    ref_at = first_step_reaching(ref_steps, ref_values, peak)
    at = first_step_reaching(steps, values, peak)
    ratio = ref_at / at if at and np.isfinite(at) and at > 0 else float("nan")
    return {
        "ref_peak": peak,
        "ref_steps_to_peak": ref_at,
        "steps_to_ref_peak": at,
        "speedup": ratio,
    }
