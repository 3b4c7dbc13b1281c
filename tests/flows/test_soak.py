"""The soak of bench/soak.py: a GFN2-xTB campaign killed with SIGKILL in its stages,
resumed after each kill, must lose no label, pay for none twice and end with the store,
the selections and the report of an uninterrupted run of the same campaign."""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import soak


def test_kills_in_four_stages_of_a_round_change_nothing_in_the_result(tmp_path):
    out = soak.soak(tmp_path, kills=4, rounds=1, probes=False, short=True)
    assert out["problems"] == []
    assert out["kills"] >= 3 and len(out["kills_by_stage"]) >= 3, out["kills_at"]
    assert out["attempts"]["round 1"] == 1 + sum(k.startswith("round 1") for k in out["kills_at"])
    assert out["labels"] == out["rows"] > 0
    assert out["label_computations"] >= out["labels"]  # the audit saw every label


@pytest.mark.slow
def test_twenty_and_more_kills_across_every_stage_and_three_rounds_change_nothing(tmp_path):
    out = soak.soak(tmp_path, kills=30, rounds=3, probes=True)
    assert out["problems"] == []
    assert out["kills"] >= 20, out["kills_at"]
    assert set(out["kills_by_stage"]) >= {"explore", "select", "label", "train", "scaling"}
