"""Sigmoid fit recovers known parameters; steps-to-peak against hand-computed values; plots."""

import numpy as np
import pytest

from fst_jax import analysis, metrics


def test_sigmoid_fit_recovers_known_asymptote():
    truth = dict(r0=0.10, a=0.47, b=1.6, c_mid=300.0)
    c = np.arange(10, 1110, 50, dtype=float)
    # Reference formula written out independently of the module.
    r = truth["r0"] + (truth["a"] - truth["r0"]) / (1 + (truth["c_mid"] / c) ** truth["b"])
    noisy = r + np.random.default_rng(0).normal(0, 0.004, size=r.shape)
    fit = analysis.fit_sigmoid(c, noisy, bootstrap=20)
    assert abs(fit.a - truth["a"]) < 0.02
    assert abs(fit.c_mid - truth["c_mid"]) / truth["c_mid"] < 0.15
    assert abs(fit.b - truth["b"]) < 0.4
    lo, hi = fit.a_ci
    assert lo <= fit.a <= hi
    np.testing.assert_allclose(fit(c), r, atol=0.01)


def _curve(c, r0, a, b, c_mid):
    return r0 + (a - r0) / (1 + (c_mid / c) ** b)


def test_asymptote_is_not_floored_at_the_luckiest_evaluation():
    """Noisy plateau: max(R) lies ABOVE the true A; the fit must not be pulled up to max(R)."""
    truth = dict(r0=0.05, a=0.40, b=2.0, c_mid=60.0)
    c = np.arange(20, 1220, 40, dtype=float)  # mostly on the plateau
    errs = []
    for seed in range(8):
        noisy = _curve(c, **truth) + np.random.default_rng(seed).normal(0, 0.03, size=c.shape)
        assert noisy.max() > truth["a"] + 0.02  # the luckiest evaluation overshoots A
        fit = analysis.fit_sigmoid(c, noisy, seed=seed)
        assert fit.a < noisy.max() - 0.01  # a max(R) lower bound would force fit.a >= max
        errs.append(fit.a - truth["a"])
    # Unbiased to within noise: mean error within 3 standard errors of 0, each within 0.03.
    errs = np.asarray(errs)
    assert abs(errs.mean()) < 3 * errs.std(ddof=1) / np.sqrt(len(errs)) + 1e-3
    assert np.all(np.abs(errs) < 0.03)


def test_asymptote_is_extrapolated_when_every_point_lies_below_it():
    """Curve still rising at the last evaluation: max(R) lies BELOW A; the fit extrapolates."""
    truth = dict(r0=0.10, a=0.60, b=1.5, c_mid=400.0)
    c = np.arange(10, 1210, 40, dtype=float)
    for seed in range(4):
        noisy = _curve(c, **truth) + np.random.default_rng(10 + seed).normal(0, 0.005, c.shape)
        assert noisy.max() < truth["a"] - 0.05
        fit = analysis.fit_sigmoid(c, noisy, seed=seed)
        assert abs(fit.a - truth["a"]) < 0.04 and fit.a > noisy.max()


def test_sigmoid_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 5 points"):
        analysis.fit_sigmoid([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        analysis.fit_sigmoid([1, 2, 3, 4, 5], [0.1, np.nan, 0.2, 0.3, 0.3])
    with pytest.raises(ValueError, match="equal length"):
        analysis.fit_sigmoid([1, 2], [0.1])


def test_steps_to_peak_ratio_hand_computed():
    rl_steps = [100, 200, 300, 400, 500, 600]
    rl_vals = [0.1, 0.2, 0.30, 0.42, 0.40, 0.41]  # running peak 0.42 first at step 400
    fst_steps = [100, 200, 300, 400]
    fst_vals = [0.2, 0.43, 0.44, 0.45]  # reaches 0.42 at step 200
    out = analysis.steps_to_peak_ratio(rl_steps, rl_vals, fst_steps, fst_vals)
    assert out == {
        "ref_peak": 0.42,
        "ref_steps_to_peak": 400.0,
        "steps_to_ref_peak": 200.0,
        "speedup": 2.0,
    }
    never = analysis.steps_to_peak_ratio(rl_steps, rl_vals, [100], [0.1])
    assert np.isnan(never["speedup"])
    assert analysis.running_max([0.1, 0.3, 0.2]).tolist() == [0.1, 0.3, 0.3]


def test_kl_vs_reward_png(tmp_path):
    for mode, slope in (("fst", 1.0), ("rl", 0.4)):
        wd = tmp_path / mode
        with metrics.MetricsWriter(wd, enabled=True, tensorboard=False) as w:
            w.write(0, {"run/mode": mode})
            for s in range(0, 30, 6):
                w.write(
                    s,
                    {
                        "val/mean@4": 0.1 + 0.01 * s * slope,
                        "val/kl_to_base": 0.002 * s,
                        "val/mean@4_running_max": 0.1 + 0.01 * s * slope,
                    },
                )
    runs = analysis.load_runs([tmp_path / "fst", tmp_path / "rl"])
    assert set(runs) == {"fst:fst", "rl:rl"}
    pts = analysis.eval_points(runs["rl:rl"]["records"])
    assert pts["step"].tolist() == [0, 6, 12, 18, 24]
    out = tmp_path / "kl.png"
    analysis.plot_kl_vs_reward(runs, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
