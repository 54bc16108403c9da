"""Results over training seeds (study.seeds): the crossed bootstrap, recipe means, pairwise differences, the
entropy-region comparison, and the config / command-line side of `seeds`."""

import json

import numpy as np
import pandas as pd
import pytest

from distillspec.study.preset import StudyConfig
from distillspec.errors import DistillSpecError
from distillspec.runtime import machine
from distillspec.study.rundir import draft_names
from distillspec.study.results import collapse_text, ranking_text
from distillspec.study.seeds import (bins_over_seeds, format_region_differences, pairwise_differences,
                                     region_differences, region_gains, speed_over_seeds)
from distillspec.study.stats import format_interval, group_metric, ratio_bootstrap


def fake_steps(rate: float, n_prompts: int = 30, steps_per_prompt: int = 20, gamma: int = 4, seed: int = 0):
    """Per-step SD records of a draft whose tokens are accepted with probability `rate` (prompt p's rate is
    shifted by a fixed prompt effect, the same for every draft: prompts are shared)."""
    rng = np.random.default_rng(seed)
    prompt_effect = np.random.default_rng(99).normal(0, 0.1, n_prompts)
    rows = []
    for p in range(n_prompts):
        r = float(np.clip(rate + prompt_effect[p], 0.01, 0.99))
        for s in range(steps_per_prompt):
            accepted = int(np.argmin(np.append(rng.random(gamma) < r, False)))  # accepted prefix
            rows.append({"row": p, "step": s, "proposed": gamma, "accepted": accepted, "emitted": accepted + 1})
    return pd.DataFrame(rows)


def test_one_seed_is_the_prompt_bootstrap():
    steps = fake_steps(0.5)
    per_prompt = steps.groupby("row")[["accepted", "proposed"]].sum()
    expected = ratio_bootstrap(per_prompt["accepted"], per_prompt["proposed"])
    got = group_metric({"a": steps}, {"a": ["a"]}, "alpha_tok").iloc[0]
    assert (got["mean"], got["lo"], got["hi"]) == pytest.approx(expected)


def test_seed_spread_widens_the_ci_and_the_mean_is_over_seeds():
    same = {f"s{i}": fake_steps(0.5, seed=i) for i in range(3)}
    spread = {f"s{i}": fake_steps(r, seed=i) for i, r in enumerate((0.3, 0.5, 0.7))}
    tight = group_metric(same, {"x": list(same)}, "alpha_tok").iloc[0]
    wide = group_metric(spread, {"x": list(spread)}, "alpha_tok").iloc[0]
    per_seed = [f["accepted"].sum() / f["proposed"].sum() for f in spread.values()]
    assert wide["per_seed"] == pytest.approx(per_seed)
    assert wide["mean"] == pytest.approx(np.mean(per_seed))
    assert wide["hi"] - wide["lo"] > 2 * (tight["hi"] - tight["lo"])
    assert wide["lo"] < min(per_seed) + 0.05 and wide["hi"] > max(per_seed) - 0.05


def test_differences_are_separated_only_beyond_noise():
    steps = {"a0": fake_steps(0.5, seed=1), "a1": fake_steps(0.5, seed=2), "b0": fake_steps(0.5, seed=3),
             "b1": fake_steps(0.5, seed=4), "c0": fake_steps(0.75, seed=5), "c1": fake_steps(0.75, seed=6)}
    groups = {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0", "c1"]}
    diffs = pairwise_differences(steps, groups).set_index(["higher", "lower"])
    assert len(diffs) == 3
    assert diffs.loc[("c", "a"), "separated"] and diffs.loc[("c", "b"), "separated"]
    ab = diffs.loc[("a", "b")] if ("a", "b") in diffs.index else diffs.loc[("b", "a")]
    assert not ab["separated"] and ab["lo"] < 0 < ab["hi"]
    means = group_metric(steps, groups, "alpha_tok")
    text = ranking_text(means, diffs.reset_index())
    assert "c > a by" in text and "c > b by" in text and "Within noise" in text


def test_seeds_evaluated_on_other_prompts_are_refused():
    with pytest.raises(DistillSpecError, match="different prompts"):
        group_metric({"a": fake_steps(0.5), "b": fake_steps(0.5, n_prompts=10)}, {"x": ["a", "b"]}, "alpha_tok")


def test_region_differences_find_where_a_recipe_gains():
    rng = np.random.default_rng(0)

    def tokens(high_rate):  # low-entropy tokens accepted at 0.8 for both; high-entropy ones at high_rate
        h = rng.uniform(0, 4, 4000)
        rate = np.where(h < 2, 0.8, high_rate)
        return pd.DataFrame({"row": np.repeat(np.arange(40), 100), "target_entropy": h,
                             "accepted": rng.random(4000) < rate})

    toks = {"ad0": tokens(0.6), "ad1": tokens(0.6), "f0": tokens(0.3), "f1": tokens(0.3)}
    diffs = region_differences(toks, {"ad": ["ad0", "ad1"], "f": ["f0", "f1"]}, "ad", [(0, 2), (2, np.inf)])
    low, high = diffs.iloc[0], diffs.iloc[1]
    assert not low["separated"] and abs(low["difference"]) < 0.05
    assert high["separated"] and high["difference"] == pytest.approx(0.3, abs=0.05)
    # the same comparison turned round: each group minus a reference, in the reference's verified tokens
    gains = region_gains(toks, {"ad": ["ad0", "ad1"], "f": ["f0", "f1"]}, "f", [(0, 2), (2, np.inf)])
    assert gains["subject"].tolist() == ["ad", "ad"] and set(gains["other"]) == {"f"}
    assert gains["difference"].tolist() == pytest.approx(diffs["difference"].tolist())
    assert (gains["lo"] <= gains["difference"]).all() and (gains["difference"] <= gains["hi"]).all()
    assert gains["separated"].tolist() == [False, True]
    table = format_region_differences(gains, rows="subject")
    assert table.splitlines()[0] == "| minus f | H in [0, 2) nats | H >= 2 nats |"
    assert table.splitlines()[2].startswith("| ad | ") and "(higher)" in table.splitlines()[2]
    assert table.splitlines()[-1].startswith("| (f's verified tokens) | ")


def test_intervals_scale_and_round_the_estimate_and_both_bounds_alike():
    assert format_interval(0.07434, 0.06849, 0.07981, scale=100) == "7.43 [6.85, 7.98]"
    assert format_interval(1.0691, 1.0615, 1.0754, digits=3) == "1.069 [1.062, 1.075]"
    assert format_interval(1.163, 1.139, 1.191, unit="x") == "1.16x [1.14, 1.19]"
    assert format_interval(0.012, -0.004, 0.03, scale=100, signed=True) == "+1.20 [-0.40, +3.00]"


def test_bins_pool_seeds_and_keep_their_spread():
    bins = pd.DataFrame({"draft": ["a0", "a1", "a0"], "bin": [0, 0, 1], "lo": [0.1, 0.1, 1], "hi": [1, 1, 2],
                         "center": [0.3, 0.3, 1.4], "n": [100, 300, 50], "k": [50, 240, 25],
                         "accept_rate": [0.5, 0.8, 0.5], "expected_accept": [0.5, 0.7, 0.5]})
    out = bins_over_seeds(bins, {"a": ["a0", "a1"]})
    assert out["bin"].tolist() == [0]  # bin 1 lacks seed a1: no spread to show
    row = out.iloc[0]
    assert row["accept_rate"] == pytest.approx(290 / 400) and (row["seed_lo"], row["seed_hi"]) == (0.5, 0.8)


def test_speed_over_seeds_pairs_batches_and_lists_gammas():
    def timing(speedup, gamma):
        return pd.DataFrame({"setting": "greedy, batch 1", "batch": range(6), "gamma": gamma, "sd_tokens": 100,
                             "sd_s": 1.0 / speedup, "target_tokens": 100, "target_s": 1.0})

    frames = {"a0": timing(1.2, 1), "a1": timing(1.3, 2)}
    predicted = pd.DataFrame({"draft": ["a0", "a1"], "setting": "greedy, batch 1", "predicted_speedup": [1.1, 1.3],
                              "alpha_pos": [0.4, 0.5]})
    row = speed_over_seeds(frames, {"a": ["a0", "a1"]}, predicted).iloc[0]
    assert row["mean"] == pytest.approx(1.25) and row["gammas"] == [1, 2]
    assert row["per_seed"] == pytest.approx([1.2, 1.3]) and row["predicted_speedup"] == pytest.approx(1.2)
    assert row["lo"] == pytest.approx(1.2) and row["hi"] == pytest.approx(1.3)


def test_collapsed_seeds_are_named_from_their_training_logs():
    """04 names the seeds whose own-rollout entropy stayed ~0 (like the GSM8K study's rkl_s2, 0 from step 10) and
    not those that dipped once; a study without training logs says nothing."""
    def log(entropies):
        return pd.DataFrame({"step": [5 * (i + 1) for i in range(len(entropies))], "entropy": entropies})

    groups = {"baseline": ["baseline"], "rkl": ["rkl_s0", "rkl_s1"], "jsd": ["jsd_s0"]}
    logs = {"rkl_s0": log([0.7, 0.3, 0.2, 0.2]), "rkl_s1": log([0.71, 1.7e-5, 1.5e-6, 7e-8, 0.0]),
            "jsd_s0": log([0.5, 1e-6, 0.4, 1e-6, 1e-6, 0.3])}
    text = collapse_text(groups, logs)
    assert "rkl_s1 from step 10" in text and "rkl_s0" not in text and "jsd_s0" not in text, text
    assert "No trained draft collapsed" in collapse_text(groups, {k: v for k, v in logs.items() if k != "rkl_s1"})
    assert collapse_text({"baseline": ["baseline"]}, {}) == ""


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory, shared_data):
    """The pipeline on a tiny preset with seeds [0, 1]: FKL and the entropy-adaptive recipe, two seeds each."""
    import yaml

    from conftest import REPO
    from distillspec.__main__ import main

    root = tmp_path_factory.mktemp("seeds")
    cfg = yaml.safe_load(open(REPO / "configs" / "tiny.yaml"))
    cfg.update(data_source=str(shared_data), max_steps=4, save_steps=2, logging_steps=1, n_eval=4, n_train=16,
               max_new_tokens=12, train_max_new_tokens=8, min_bin_count=2, divergences=["fkl"], seeds=[0, 1],
               extra_runs=[{"name": "adaptive", "divergence": "jsd",
                            "adaptive_beta": {"h_low": 0.5, "h_high": 3.0, "low": "rkl", "high": "jsd"}}],
               speed=[{"greedy": True, "batch_size": 1}])
    config = root / "tiny_seeds.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = root / "run"
    assert main(["run", "--config", str(config), "--run-dir", str(run_dir), "--publish", str(root / "pub")]) == 0
    return StudyConfig.from_yaml(config), run_dir


def test_a_seeded_study_reports_means_over_seeds(seeded_run):
    from distillspec.study.rundir import RunPaths

    cfg, run_dir = seeded_run
    paths = RunPaths(run_dir)
    assert draft_names(cfg) == ["baseline", "fkl_s0", "fkl_s1", "adaptive_s0", "adaptive_s1"]
    for name in draft_names(cfg):
        assert paths.speed_row(name).is_file() and paths.timing(name).is_file()
        assert json.loads(paths.speed_row(name).read_text())["machine"] == machine()  # which machine timed it
    assert json.loads(paths.target_speed.read_text())["machine"] == machine()
    # the seed changes training: two seeds, two different drafts
    from safetensors.torch import load_file

    w0, w1 = (load_file(paths.student(f"fkl_s{s}") / "model.safetensors") for s in (0, 1))
    assert any(not (w0[k] == w1[k]).all() for k in w0)
    # a recipe's values are means over its seeds (recomputed here from the records: per-step, timing)
    summary = pd.read_csv(paths.seed_summary)
    fkl = summary[(summary["group"] == "fkl") & (summary["metric"] == "alpha_tok")].iloc[0]
    per_seed = [(lambda s: s["accepted"].sum() / s["proposed"].sum())(pd.read_parquet(paths.steps(f"fkl_s{i}")))
                for i in (0, 1)]
    assert fkl["mean"] == pytest.approx(np.mean(per_seed)) and fkl["lo"] <= fkl["mean"] <= fkl["hi"]
    speed = summary[(summary["group"] == "adaptive") & (summary["metric"] == "speedup")].iloc[0]
    timed = [pd.read_parquet(paths.timing(f"adaptive_s{i}")) for i in (0, 1)]
    per_seed = [(t["sd_tokens"].sum() / t["sd_s"].sum()) / (t["target_tokens"].sum() / t["target_s"].sum())
                for t in timed]
    assert speed["mean"] == pytest.approx(np.mean(per_seed)) and speed["setting"] == "greedy, batch 1"
    results = paths.results.read_text()
    assert "| fkl | 2 | " in results and "| adaptive | 2 | " in results and "| baseline | 1 | " in results
    assert "speedup, greedy, batch 1 [95% CI] (gamma; predicted)" in results
    assert "Ranking by alpha_tok" in results and "| adaptive minus |" in results
    assert "| fkl_s1 |" in results  # each seed's own row too
    assert "No trained draft collapsed" in results  # random-init tiny drafts keep their entropy
    diffs = pd.read_csv(paths.differences)
    assert len(diffs) == 3  # baseline, fkl, adaptive: three pairs
    assert "| minus baseline |" in results  # each recipe against the baseline, per teacher-entropy region
    regions = pd.read_csv(paths.entropy_regions)  # that table's rows, then the blend's against each other recipe
    gains, blend = regions[regions["other"] == "baseline"], regions[regions["other"] != "baseline"]
    assert sorted(set(gains["subject"])) == ["adaptive", "fkl"] and len(gains) == 6
    assert set(blend["subject"]) == {"adaptive"} and set(blend["other"]) == {"fkl"} and len(blend) == 3
    assert paths.figure("entropy", cfg.task).is_file()


def test_a_study_in_parts_reads_where_it_stands_over_the_seeds_it_has(seeded_run, tmp_path):
    """interim.md: results.md's text over the drafts evaluated so far, a recipe's mean over the seeds it has; the
    drafts still to come named; the seeds' CSVs of 04 not written."""
    import shutil

    from distillspec.study.rundir import RunPaths
    from distillspec.study.stages import interim_results

    cfg, run_dir = seeded_run
    part = tmp_path / "part"
    shutil.copytree(run_dir, part, ignore=shutil.ignore_patterns("student", "checkpoint-*", "*.ipynb", "*.csv"))
    paths = RunPaths(part)
    paths.manifest("fkl_s1").unlink()  # fkl's second seed not finished yet
    text = interim_results(cfg, part)
    assert text.startswith("**Interim**: 4 of 5 drafts evaluated; still to come: fkl_s1. Recipes with some of their "
                           "seeds so far: fkl (1 of 2)")
    assert paths.interim.read_text() == text
    per_seed = (lambda s: s["accepted"].sum() / s["proposed"].sum())(pd.read_parquet(paths.steps("fkl_s0")))
    fkl = next(line for line in text.splitlines() if line.startswith("| fkl | 1 | "))
    assert fkl.split(" | ")[2].startswith(f"{100 * per_seed:.2f} [")  # the one seed's value, not the pair's mean
    assert "| adaptive | 2 | " in text and "| fkl_s1 |" not in text
    assert not paths.seed_summary.exists() and not paths.differences.exists()
    for name in ("baseline", "fkl_s0", "fkl_s1", "adaptive_s0", "adaptive_s1"):
        paths.manifest(name).unlink(missing_ok=True)
    with pytest.raises(DistillSpecError, match="No evaluated drafts"):
        interim_results(cfg, part)
