"""Scaling-law fits on synthetic laws and the data / model / stop decision."""

import numpy as np
import pytest

from sapis.scaling.decision import Costs, decide
from sapis.scaling.fits import InsufficientData, fit


@pytest.fixture(scope="module")
def joint_grid():
    """Errors from ε + A·N^-α + B·P^-β with 1 % multiplicative noise on a 6 × 5 grid."""
    rng = np.random.default_rng(0)
    n = np.repeat([25, 50, 100, 200, 400, 800], 5).astype(float)
    p = np.tile([2e3, 8e3, 3e4, 1.2e5, 5e5], 6).astype(float)
    truth = {"eps": 0.01, "A": 2.0, "alpha": 0.5, "B": 5.0, "beta": 0.3}
    loss = truth["eps"] + truth["A"] * n ** -truth["alpha"] + truth["B"] * p ** -truth["beta"]
    return n, p, loss * np.exp(rng.normal(0, 0.01, n.size)), truth


def test_joint_fit_recovers_exponents_within_5_percent_and_the_floor_in_its_interval(joint_grid):
    n, p, loss, truth = joint_grid
    law = fit("joint", loss, n, p, bootstrap=60)
    assert law.params["alpha"] == pytest.approx(truth["alpha"], rel=0.05)
    assert law.params["beta"] == pytest.approx(truth["beta"], rel=0.05)
    lo, hi = law.intervals["eps"]
    assert lo <= truth["eps"] <= hi
    assert law.intervals["alpha"][0] < law.params["alpha"] < law.intervals["alpha"][1]
    assert law.rmse_log < 0.02
    assert "alpha = " in law.describe()


@pytest.mark.parametrize("form, exponent", [("data", 0.6), ("model", 0.26), ("compute", 0.2)])
def test_single_variable_laws_recover_their_exponent(form, exponent):
    rng = np.random.default_rng(1)
    x = np.geomspace(10, 1e4, 8) if form == "data" else np.geomspace(1e3, 1e9, 8)
    loss = (0.02 + 3.0 * x**-exponent) * np.exp(rng.normal(0, 0.01, x.size))
    law = fit(form, loss, x, bootstrap=50)
    name = {"data": "alpha", "model": "beta", "compute": "gamma"}[form]
    assert law.params[name] == pytest.approx(exponent, rel=0.05)
    assert law(x[-1]) == pytest.approx(loss[-1], rel=0.05)


def test_too_few_or_too_alike_points_are_refused_clearly():
    with pytest.raises(InsufficientData, match="needs at least 4 points; got 3"):
        fit("data", [0.3, 0.2, 0.15], [10, 20, 40])
    with pytest.raises(InsufficientData, match="at least 3 distinct values"):
        fit("data", [0.3, 0.29, 0.2, 0.19], [10, 10, 40, 40])
    with pytest.raises(InsufficientData, match="needs at least 6 points"):
        fit("joint", [0.3, 0.2, 0.1, 0.09, 0.08], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    with pytest.raises(InsufficientData, match="at least 2 distinct model sizes"):
        fit("joint", [0.3, 0.2, 0.1, 0.09, 0.08, 0.07], [1, 2, 3, 4, 5, 6], [7] * 6)
    with pytest.raises(InsufficientData, match="positive"):
        fit("data", [0.3, 0.2, 0.0, 0.1], [10, 20, 40, 80])


def _law(eps, a, alpha, b, beta):
    """A joint law fitted to exact points of the given parameters."""
    n = np.repeat([25, 50, 100, 200, 400, 800], 5).astype(float)
    p = np.tile([2e3, 8e3, 3e4, 1.2e5, 5e5], 6).astype(float)
    return fit("joint", eps + a * n**-alpha + b * p**-beta, n, p, bootstrap=0)


def test_decision_buys_data_when_the_data_term_dominates():
    law = _law(0.005, 3.0, 0.5, 0.05, 0.3)  # the model term is already tiny
    d = decide(law, 100, 30_000, 50, Costs(label=10, train_current=600, train_next=2400), 120_000)
    assert d.action == "data" and d.gain_data > d.gain_model
    assert "more labels" in d.reason


def test_decision_grows_the_model_when_the_model_term_dominates():
    law = _law(0.005, 0.05, 0.5, 20.0, 0.3)  # the data term is already tiny
    d = decide(law, 400, 8_000, 50, Costs(label=10, train_current=600, train_next=2400), 30_000)
    assert d.action == "model" and d.gain_model > d.gain_data
    assert "next size" in d.reason


def test_decision_stops_at_the_floor_or_below_the_gain_threshold():
    law = _law(0.05, 0.01, 0.5, 0.01, 0.3)  # both terms negligible against ε
    d = decide(law, 800, 500_000, 50, Costs(label=10, train_current=600, train_next=2400), 2e6)
    assert d.action == "stop" and "floor" in d.reason
    law = _law(0.005, 3.0, 0.5, 0.05, 0.3)
    d = decide(law, 100, 30_000, 50, Costs(10, 600, 2400), 120_000, min_gain=1.0, floor_margin=0.0)
    assert d.action == "stop" and "threshold" in d.reason


def test_a_real_small_fit_on_rmd17_gives_finite_exponents_with_intervals(malonaldehyde, tmp_path):
    from sapis.scaling.records import fit_points, point_from_records
    from sapis.surrogate.settings import TrainingConfig
    from sapis.surrogate.training import train_member

    train, _ = malonaldehyde
    val = train[900:930]
    training = TrainingConfig(size="xs", max_epochs=12, bootstrap=False)
    points = []
    for n in (10, 20, 40, 80, 160):  # the same passes over the data: compute grows with N
        record = train_member(train[:n], val, tmp_path / str(n), training, progress=False)
        points.append(point_from_records([record.__dict__], f"n{n}", 0, 0.0))
    fits = fit_points(points, bootstrap=100)
    law = fits["data"]
    assert not isinstance(law, str), law
    assert np.isfinite(law.params["alpha"]) and law.params["alpha"] > 0
    assert all(np.isfinite(v) for v in law.intervals["alpha"])
    assert law.intervals["alpha"][0] <= law.params["alpha"] <= law.intervals["alpha"][1]
    assert "refused" not in str(fits["compute"]) and not isinstance(fits["compute"], str)
    assert "needs at least 6 points; got 5" in fits["joint"]  # refused, with the reason


def test_probes_cover_three_fractions_at_two_sizes():
    from sapis.scaling.probes import neighbour_size, next_size, plan_probes

    ladder = ["xs", "s", "m", "l"]
    assert neighbour_size("xs", ladder) == "s" and neighbour_size("m", ladder) == "s"
    assert next_size("l", ladder) is None and next_size("s", ladder) == "m"
    plan = plan_probes("s", ladder, [1.0, 0.25, 0.5])
    assert plan == [(s, f) for s in ("s", "xs") for f in (0.25, 0.5, 1.0)]


def _with_refits(law, refits: list[dict]):
    """``law`` carrying ``refits`` (parameter dicts) as its bootstrap samples."""
    from dataclasses import replace

    names = list(law.params)
    return replace(law, samples={k: [r[k] for r in refits] for k in names}, bootstrap=len(refits))


def test_a_stop_needs_the_bootstrap_refits_to_agree():
    costs = Costs(label=10, train_current=600, train_next=2400)
    law = _law(0.05, 0.01, 0.5, 0.01, 0.3)  # at the floor: the best fit says stop
    sure = _with_refits(law, [dict(law.params, eps=law.params["eps"] * f) for f in (0.97, 1.03)])
    d = decide(sure, 800, 500_000, 50, costs, 2e6)
    assert d.action == "stop" and d.support == 1.0 and "100 % of bootstrap refits" in d.reason
    # a floor whose interval spans the observed errors: most refits put it near zero
    unsure = _with_refits(law, [dict(law.params, eps=0.001, A=3.0)] * 7 + [dict(law.params)] * 3)
    d = decide(unsure, 800, 500_000, 50, costs, 2e6)
    assert d.action == "data" and "only 30 % of its 10 bootstrap refits" in d.reason
    assert d.support == pytest.approx(0.7)


def test_a_larger_model_needs_the_bootstrap_refits_to_agree():
    costs = Costs(label=10, train_current=600, train_next=2400)
    law = _law(0.005, 0.05, 0.5, 20.0, 0.3)  # the model term dominates: grow
    split = [dict(law.params, B=0.001)] * 5 + [dict(law.params)] * 5
    d = decide(_with_refits(law, split), 400, 8_000, 50, costs, 30_000)
    assert d.action == "data" and "grow the model in only 50 %" in d.reason
