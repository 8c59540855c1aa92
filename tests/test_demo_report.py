"""The demo's before/after table: the figures the issue asks for, computed from the evaluations."""

from __future__ import annotations

from pathlib import Path

from policy_trainer.demo import demo_report


def evaluation(score_mean: float, score_std: float, kl_mean: float, completions: list[str]) -> dict:
    return {
        "responses": 64,
        "score_mean": score_mean,
        "score_std": score_std,
        "kl_mean": kl_mean,
        "response_length_mean": 20.0,
        "samples": [
            {"prompt": f"prompt {index}", "completion": text, "score": score_mean}
            for index, text in enumerate(completions)
        ],
    }


def test_the_gain_is_in_units_of_the_initial_scores_std():
    before = evaluation(0.1, 0.8, 0.0, ["a", "b", "c", "d"])
    after = evaluation(1.3, 0.5, 4.25, ["A", "B", "C", "D"])
    report = demo_report(before, after, Path("run/ppo"), seconds=90)
    assert "gain: +1.200 = +1.50 x the initial score's std" in report  # (1.3 - 0.1) / 0.8
    assert "4.250" in report  # the final KL to the reference
    assert "wall time 1.5 min" in report


def test_the_report_shows_three_before_after_pairs_for_the_same_prompts_each_on_one_line():
    before = evaluation(0.0, 1.0, 0.0, ["one\nline", "two", "three", "four"])
    after = evaluation(1.0, 1.0, 1.0, ["ONE", "TWO", "THREE", "FOUR"])
    report = demo_report(before, after, Path("run/ppo"), seconds=60)
    assert report.count("prompt: ") == 3
    assert "before [+0.00] one line" in report
    assert "after  [+1.00] THREE" in report
    assert "FOUR" not in report
