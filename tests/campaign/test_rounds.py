"""Round records: the stop rules that end a campaign, and the plan of the next round."""

from sapis.campaign.config import StopConfig
from sapis.campaign.rounds import RoundRecord, plan_next_round, stop_reason
from sapis.scaling.settings import ScalingConfig


def test_stop_rules_each_end_a_campaign():
    r = [
        RoundRecord(0, labels=20, test_force_mae=0.2),
        RoundRecord(1, labels=40, test_force_mae=0.1, explored=100, accurate=96),
    ]
    assert stop_reason([], StopConfig()) is None
    assert stop_reason(r, StopConfig()) is None
    assert "target" in stop_reason(r, StopConfig(force_mae=0.1))
    r.append(RoundRecord(2, labels=60, test_force_mae=0.09, explored=100, accurate=97))
    assert "accurate for 2 round" in stop_reason(r, StopConfig())
    assert stop_reason(r, StopConfig(accurate_fraction=0.99)) is None
    assert "label budget" in stop_reason(r, StopConfig(accurate_fraction=0.99, max_labels=60))
    assert "round cap" in stop_reason(r, StopConfig(accurate_fraction=0.99, max_rounds=2))
    assert "wall-time" in stop_reason(r, StopConfig(accurate_fraction=0.99, wall_hours=1), 1.5)


def test_the_next_round_follows_the_scaling_decision_unless_pinned_or_given():
    grow = RoundRecord(1, size="s", decision={"action": "model", "next_size": "m"})
    data = RoundRecord(1, size="s", decision={"action": "data", "next_size": "m"})
    on = ScalingConfig()

    def plan(records, scaling=on, labels=None):
        p = plan_next_round(records, 30, "xs", scaling, labels=labels)
        return p.labels, p.size

    assert plan([]) == (30, "xs")
    assert plan([grow]) == (0, "m")
    assert plan([data]) == (30, "s")
    assert plan([grow], ScalingConfig(pin_size=True)) == (30, "s")
    assert plan([grow], ScalingConfig(pin_labels=True)) == (30, "m")
    assert plan([grow], ScalingConfig(enabled=False)) == (30, "s")
    assert plan([grow], labels=7) == (7, "m")  # a round by hand buys what it is told
