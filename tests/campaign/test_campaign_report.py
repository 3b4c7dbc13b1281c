"""Campaign plots, round table and markdown report from plausible round records."""

import numpy as np

from sapis.campaign.report import markdown_report, plot_parity, plot_rounds, round_table
from sapis.campaign.rounds import RoundRecord


def _rounds() -> list[RoundRecord]:
    return [
        RoundRecord(
            round=0,
            labels=40,
            new_labels=40,
            test_force_mae=0.150,
            test_energy_mae=0.020,
            size="small",
            parameters=120_000,
            dft_seconds=400.0,
            seconds={"label": 410.2, "train": 95.0, "evaluate": 3.1},
        ),
        RoundRecord(
            round=1,
            labels=60,
            new_labels=20,
            failed_labels=1,
            explored=200,
            accurate=110,
            candidate=70,
            failed=20,
            selected=21,
            by_source={
                "md": {"accurate": 80, "candidate": 40, "failed": 5, "selected": 12},
                "rattle": {"accurate": 30, "candidate": 30, "failed": 15, "selected": 9},
            },
            max_force_dev_median=0.08,
            max_force_dev_p95=0.45,
            test_force_mae=0.095,
            test_energy_mae=0.012,
            size="small",
            parameters=120_000,
            dft_seconds=210.5,
            seconds={"explore": 30.0, "select": 1.2, "label": 215.0, "train": 80.0},
        ),
        RoundRecord(
            round=2,
            labels=75,
            new_labels=15,
            explored=200,
            accurate=170,
            candidate=25,
            failed=5,
            selected=15,
            by_source={
                "md": {"accurate": 170, "candidate": 25, "failed": 5, "selected": 15},
                "generator": {
                    "proposed": 50,
                    "valid": 46,
                    "accurate": 30,
                    "candidate": 14,
                    "failed": 2,
                    "selected": 6,
                },
            },
            max_force_dev_median=0.04,
            max_force_dev_p95=0.21,
            test_force_mae=0.061,
            test_energy_mae=0.007,
            size="small",
            parameters=120_000,
            dft_seconds=150.0,
            seconds={"explore": 29.0, "select": 1.0, "label": 152.0, "train": 81.0},
            stop_reason="85 % or more of explored frames accurate for 1 round(s) in a row",
        ),
    ]


def test_plot_rounds_writes_every_plot(tmp_path):
    plots = plot_rounds(_rounds(), tmp_path / "plots", accurate_target=0.85, window=(0.05, 0.5))
    assert set(plots) == {"learning_curve", "ratios", "uncertainty"}
    for path in plots.values():
        assert path.parent == tmp_path / "plots"
        assert path.suffix == ".png" and path.stat().st_size > 5000


def test_plot_rounds_skips_plots_without_data(tmp_path):
    plots = plot_rounds(_rounds()[:1], tmp_path / "plots")
    assert set(plots) == {"learning_curve"}
    assert plot_rounds([RoundRecord(round=0)], tmp_path / "empty") == {}


def test_round_table_formats_percentages_units_and_gaps():
    rows = round_table(_rounds())
    assert [r["round"] for r in rows] == [0, 1, 2]
    r0, r1, r2 = rows
    assert r0["accurate %"] == r0["failed %"] == "-"
    assert r0["explore s"] == "-" and r0["label s"] == 410.2
    assert r0["test force MAE (meV/Å)"] == 150.0
    assert r1["accurate %"] == "55.0" and r1["candidate %"] == "35.0" and r1["failed %"] == "10.0"
    assert r1["test energy MAE (meV)"] == 12.0 and r1["evaluate s"] == "-"
    assert r1["stop"] == "" and r2["stop"].startswith("85 %")
    assert r1["md valid/in window/selected"] == "125/40/12"
    assert r1["generator valid/in window/selected"] == "-"
    assert r2["generator valid/in window/selected"] == "46/14/6"
    nan = round_table([RoundRecord(round=3)])[0]
    assert nan["test force MAE (meV/Å)"] == "-" and nan["test energy MAE (meV)"] == "-"


def test_markdown_report_links_or_embeds_plots(tmp_path):
    rounds = _rounds()
    plots = plot_rounds(rounds, tmp_path / "plots")
    text = markdown_report(rounds, plots, "water campaign", extra="\nfooter line\n")
    assert text.startswith("# water campaign")
    assert "| round | labels | new labels |" in text
    assert "61.0 meV/Å" in text and "Stopped: 85 %" in text
    assert "## Sources in round 2" in text
    assert "| source | proposed | valid | in window | selected |" in text
    assert "| generator | 50 | 46 | 14 | 6 | 30 | 14 | 2 |" in text
    assert "| md | 200 | 200 | 25 | 15 | 170 | 25 | 5 |" in text
    assert "| rattle |" not in text
    assert "![learning_curve](plots/learning_curve.png)" in text
    assert "![ratios](plots/ratios.png)" in text
    assert "base64" not in text and text.endswith("footer line\n")
    embedded = markdown_report(rounds, plots, "water campaign", embed=True)
    assert embedded.count("data:image/png;base64,") == 3
    assert "plots/learning_curve.png" not in embedded


def test_plot_parity_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    e_ref = rng.normal(-5.0, 0.1, 30)
    f_ref = rng.normal(0.0, 1.0, (30, 3, 3))
    path = plot_parity(
        e_ref,
        e_ref + rng.normal(0, 0.005, 30),
        f_ref,
        (f_ref + rng.normal(0, 0.05, f_ref.shape)).ravel(),
        tmp_path / "parity.png",
        title="test split",
    )
    assert path == tmp_path / "parity.png" and path.stat().st_size > 5000
