"""The training-vs-serving analysis: Spearman's rho agrees with scipy, its CI covers it, and published folders are
read into one row per draft (a draft imported by a second study counted once)."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from distillspec import DistillSpecError
from distillspec.study.manifest import write_manifest
from distillspec.study.training_signal import collect, correlations, spearman


def test_spearman_matches_scipy_and_its_interval_covers_it():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    y[3] = y[4]  # a tie
    rho, lo, hi = spearman(x, y)
    assert rho == pytest.approx(spearmanr(x, y).statistic)
    assert lo < rho < hi and 0 < lo
    assert spearman(x, -y)[0] == pytest.approx(-rho)
    with pytest.raises(DistillSpecError, match="at least 3 pairs"):
        spearman([1, 2], [1, 2])


def _publish(root, study, task, drafts):
    folder = root / study / "records"
    folder.mkdir(parents=True)
    (root / study / "config.yaml").write_text(yaml.safe_dump({"name": study, "task": task}))
    for name, (curve, accepted) in drafts.items():
        lines = [{"step": 5 * (i + 1), "loss": 1.0, "expected_accept": e} for i, e in enumerate(curve)]
        (folder / f"{name}_train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        pd.DataFrame({"accepted": accepted, "proposed": [4] * len(accepted)}).to_parquet(
            folder / f"{name}_steps.parquet")
        write_manifest({f.name: f for f in folder.glob(f"{name}_*")}, folder / f"{name}_manifest.json")


def test_collect_reads_published_drafts_once_each(tmp_path):
    _publish(tmp_path, "big", "gsm8k", {f"d{i}": ([0.1, 0.2 + i / 10], [i % 5, 1, 2]) for i in range(6)})
    _publish(tmp_path, "small", "gsm8k", {"d0": ([0.1, 0.2], [0, 1, 2])})  # big's d0, imported
    table = collect(tmp_path)
    assert len(table) == 6 and set(table["study"]) == {"big"}
    row = table.set_index("draft").loc["d1"]
    assert row["last_expected_accept"] == pytest.approx(0.3)
    assert row["alpha_pos"] == pytest.approx((1 + 1 + 2) / (2 + 2 + 3))  # accepted / (accepted + first rejected)
    rho = correlations(table)
    assert {"all", "task gsm8k", "study big"} <= set(rho["set"])
    with pytest.raises(DistillSpecError, match="No published drafts"):
        collect(tmp_path / "nothing")


def test_the_command_writes_its_tables_and_figure(tmp_path, capsys):
    from distillspec.__main__ import main

    _publish(tmp_path / "pub", "big", "gsm8k", {f"d{i}": ([0.1, 0.2 + i / 10], [i % 5, 1, 2]) for i in range(6)})
    out = tmp_path / "out"
    assert main(["training-signal", "--published", str(tmp_path / "pub"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"training_signal.csv", "training_signal_rho.csv",
                                               "training_signal.png"}
    assert "study big" in capsys.readouterr().out
    assert main(["training-signal", "--published", str(tmp_path / "none"), "--out", str(out)]) == 2


def test_the_logged_acceptance_is_split_by_whose_text_was_trained_on():
    from distillspec.study.training_signal import by_text

    share = np.array([0.2, 0.4, 0.6, 0.8, 0.4, 0.6, 1.0, 0.0])
    log = pd.DataFrame({"teacher_rollout": share, "expected_accept": 0.7 - 0.4 * share})  # own text 0.7, teacher 0.3
    split = by_text(pd.concat([log, log]))
    assert split["own_text_expected_accept"] == pytest.approx(0.7)
    assert split["teacher_text_expected_accept"] == pytest.approx(0.3)
    assert np.isnan(by_text(log.assign(teacher_rollout=0.5))["teacher_text_expected_accept"])  # no spread: no fit
    logged = log.assign(expected_accept_teacher_text=[0.1, np.nan] * 4, expected_accept_own_text=0.9)
    assert by_text(logged) == {"teacher_text_expected_accept": pytest.approx(0.1),
                               "own_text_expected_accept": pytest.approx(0.9)}  # logged per text: read as logged


def test_the_validation_signal_is_read_where_the_run_kept_its_draft():
    from distillspec.study.training_signal import validation_signal

    log = pd.DataFrame([{"step": 2, "loss": 1.0}, {"step": 2, "eval_alpha_pos": 0.4},
                        {"step": 4, "eval_alpha_pos": 0.6}, {"step": 6, "eval_alpha_pos": 0.5}])
    assert validation_signal(log)["validation_alpha_pos"] == 0.5  # the last draft is kept
    chosen = pd.concat([log, pd.DataFrame([{"step": 6, "selected_step": 4, "selected_alpha_pos": 0.6}])])
    assert validation_signal(chosen)["validation_alpha_pos"] == 0.6
    assert np.isnan(validation_signal(log[["step", "loss"]])["validation_alpha_pos"])
