"""Buy labels, grow the model, or stop: the choice a fitted L(N, P) and measured costs make.

For the current data count N and model size P the fit predicts the error drop of

(a) ΔN more labels at this size:   L(N, P) − L(N + ΔN, P), costing ΔN DFT labels plus a
    retraining at this size;
(b) the next size P' on the same data:   L(N, P) − L(N, P'), costing a training at P'.

Each gain is divided by its cost in core-seconds; the better one wins, unless even it
gains less than ``min_gain`` (eV/Å, L being a force error), or the current error is already within
``floor_margin`` (relative) of the floor ε, in which case the answer is to stop.

A decision must be supported by the fit's uncertainty: each one is re-made under every
bootstrap refit of the law, and ``support`` is the share of refits that agree. A stop or a
larger model needs ``min_support`` of them (a floor whose interval spans the observed
errors stops nothing); otherwise the campaign buys data, the choice that is never wasted,
and the reason says that the fit could not tell.
"""

from dataclasses import asdict, dataclass, replace

from sapis.scaling.fits import FORMS, PowerLawFit


@dataclass
class Costs:
    """Measured costs in core-seconds: one DFT label, and one training at the current and
    at the next size."""

    label: float
    train_current: float
    train_next: float | None


@dataclass
class Decision:
    """What to do next and the numbers behind it (errors as the fit's: force MAE, eV/Å;
    costs in core-seconds)."""

    action: str  # "data" | "model" | "stop"
    reason: str
    current: float
    gain_data: float
    gain_model: float | None
    cost_data: float
    cost_model: float | None
    delta_n: int
    next_parameters: int | None
    support: float | None = None  # share of bootstrap refits making the same choice

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    law: PowerLawFit,
    n: int,
    parameters: int,
    delta_n: int,
    costs: Costs,
    next_parameters: int | None = None,
    min_gain: float = 0.0,
    floor_margin: float = 0.05,
    min_support: float = 0.8,
) -> Decision:
    """Compare (a) ``delta_n`` more labels with (b) the size of ``next_parameters``
    (None: no larger size) under ``law`` (the ``joint`` form) and ``costs``; a stop or a
    larger model only where ``min_support`` of the bootstrap refits agree."""
    args = (n, parameters, delta_n, costs, next_parameters, min_gain, floor_margin)
    best = _decide(law, *args)
    refits = _refits(law)
    if not refits:
        return best
    support = sum(_decide(r, *args).action == best.action for r in refits) / len(refits)
    if best.action != "data" and support < min_support:
        data = _decide(law, *args, force_data=True)
        return replace(
            data,
            reason=f"{data.reason}; the fit would {_verb(best.action)} in only "
            f"{100 * support:.0f} % of its {len(refits)} bootstrap refits (needs "
            f"{100 * min_support:.0f} %): {best.reason}",
            support=1.0 - support,
        )
    return replace(
        best, reason=f"{best.reason} ({100 * support:.0f} % of bootstrap refits agree)",
        support=support,
    )  # fmt: skip


def _verb(action: str) -> str:
    return {"stop": "stop", "model": "grow the model", "data": "buy data"}[action]


def _refits(law: PowerLawFit) -> list[PowerLawFit]:
    """The law with each bootstrap refit's parameters."""
    names = FORMS[law.form]
    if not law.samples or any(name not in law.samples for name in names):
        return []
    count = min(len(law.samples[name]) for name in names)
    return [
        replace(law, params={name: law.samples[name][j] for name in names}, samples={})
        for j in range(count)
    ]


def _decide(
    law: PowerLawFit,
    n: int,
    parameters: int,
    delta_n: int,
    costs: Costs,
    next_parameters: int | None,
    min_gain: float,
    floor_margin: float,
    force_data: bool = False,
) -> Decision:
    if law.form != "joint":
        raise ValueError(f"a decision needs the joint L(N, P) law, got the {law.form} form")
    current = float(law(n, parameters))
    gain_data = current - float(law(n + delta_n, parameters))
    cost_data = delta_n * costs.label + costs.train_current
    gain_model = cost_model = None
    if next_parameters is not None and costs.train_next is not None:
        gain_model = current - float(law(n, next_parameters))
        cost_model = costs.train_next

    def unit(x: float) -> str:
        return f"{1000 * x:.1f} meV/Å"

    def decision(action: str, reason: str) -> Decision:
        return Decision(
            action, reason, current, gain_data, gain_model, cost_data, cost_model, delta_n,
            next_parameters,
        )  # fmt: skip

    if force_data:
        pass
    elif current <= law.floor * (1 + floor_margin):
        return decision(
            "stop",
            f"the predicted error {unit(current)} is within {100 * floor_margin:.0f} % of the "
            f"fitted floor ε = {unit(law.floor)}: neither data nor size can help",
        )
    best_gain = max(gain_data, gain_model if gain_model is not None else -1.0)
    if best_gain < min_gain and not force_data:
        return decision(
            "stop",
            f"the best predicted gain, {unit(best_gain)}, is below the threshold {unit(min_gain)}",
        )
    rate_data = gain_data / cost_data
    rate_model = gain_model / cost_model if gain_model is not None and cost_model else None
    if rate_model is not None and rate_model > rate_data and not force_data:
        return decision(
            "model",
            f"the next size ({next_parameters:,} parameters) is predicted to cut the error by "
            f"{unit(gain_model)} for {cost_model:,.0f} core-s, against {unit(gain_data)} for "
            f"{cost_data:,.0f} core-s from {delta_n} more labels",
        )
    return decision(
        "data",
        f"{delta_n} more labels are predicted to cut the error by {unit(gain_data)} for "
        f"{cost_data:,.0f} core-s"
        + (
            f", against {unit(gain_model)} for {cost_model:,.0f} core-s from the next size"
            if gain_model is not None
            else " (no larger size to try)"
        ),
    )
