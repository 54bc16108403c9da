"""The warm start: a derived draft trained off-policy on its teacher's text before on-policy distillation. It
raises the draft's served acceptance, records its curve, resumes to the same weights, refuses bad settings, and a
study with one trains its baseline first and starts every run from it."""

import pytest
import torch

from distillspec import DistillSpecError
from distillspec.config import Config
from distillspec.models import draft_from_teacher
from distillspec.offline_loop import LoopSettings, train_offline
from distillspec.study.preset import StudyConfig
from distillspec.tiny import tiny_model
from distillspec.trainlog import read_log
from distillspec.warm_start import WarmStart, train_warm_start, warm_curve

from conftest import REPO
from test_specdec import _prompts

TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def target():
    return tiny_model("qwen3", seed=1, init_std=0.5, hidden_size=32)


@pytest.fixture(scope="module")
def warm_run(target, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm")
    cfg = Config(teacher="tiny-qwen3", student_keep_layers=1, max_new_tokens=16, temperature=1.0, top_p=1.0,
                 logging_steps=5, save_steps=20, loss_temperature=1.0)
    warm = WarmStart(steps=60, learning_rate=3e-3, warmup_steps=2, batch_size=8, text_prompts=32, text_tokens=16,
                     eval_every=30, eval_prompts=16)
    prompts = _prompts([6, 11, 3, 17, 9, 4, 13, 8] * 4, seed=5)
    student = draft_from_teacher(target, 1).float()
    # the curve decodes prompts the draft trained on: a random tiny teacher teaches nothing that carries over to
    # other prompts, and this tests that the curve measures what training changed
    result = train_warm_start(cfg, warm, out, target=target, tokenizer=tokenizer, prompts=prompts,
                              eval_prompts=prompts, gamma=3, student=student)
    return result, warm


def test_warm_start_raises_served_acceptance_and_records_its_curve(warm_run, tokenizer):
    from distillspec.models import load_model

    result, warm = warm_run
    log = read_log(result.log_path)
    curve = warm_curve(log)
    assert curve["step"].tolist() == [0, 30, 60]  # before any step, every eval_every, at the end
    assert curve["alpha_pos"].iloc[-1] > curve["alpha_pos"].iloc[0] + 0.05, curve
    trained = log.dropna(subset=["loss"])
    assert len(trained) == warm.steps // 5
    assert trained["loss"].iloc[-2:].mean() < trained["loss"].iloc[:2].mean()
    assert trained["expected_accept"].iloc[-2:].mean() > trained["expected_accept"].iloc[:2].mean()
    assert not (result.output_dir / "checkpoint.pt").exists()
    model, tok = load_model(result.student_dir)  # a plain model folder with the teacher's tokenizer
    assert model.config.num_hidden_layers == 1 and tok.eos_token_id == tokenizer.eos_token_id


def test_an_interrupted_offline_run_resumes_to_the_same_weights(tmp_path):
    data = torch.randn(24, 8, generator=torch.Generator().manual_seed(0))
    settings = LoopSettings(max_steps=6, batch_size=4, learning_rate=1e-2, save_steps=2, logging_steps=1)

    def run(out, stop_at=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 8)
        calls = []

        def step_loss(pick):
            calls.append(pick)
            if stop_at is not None and len(calls) == stop_at:
                raise KeyboardInterrupt
            return {"loss": (model(data[pick]) - data[pick].flip(1)).pow(2).mean()}

        return model, train_offline(model, len(data), step_loss, settings, out)

    whole, (steps, resumed) = run(tmp_path / "whole")
    assert steps == 6 and resumed is None
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", stop_at=6)  # step 6 fails: the checkpoint of step 4 is kept
    again, (steps, resumed) = run(tmp_path / "cut")
    assert steps == 6 and resumed.endswith("checkpoint.pt")
    for a, b in zip(whole.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert sorted(set(read_log(tmp_path / "cut" / "train_log.jsonl")["step"])) == [1, 2, 3, 4, 5, 6]


def test_warm_start_settings_are_checked(shared_data):
    def study(**changes):
        return StudyConfig.from_yaml(TINY, data_source=str(shared_data), **changes)

    assert study(warm_start={"steps": 30, "learning_rate": "1e-3"}).warm_start["learning_rate"] == 1e-3
    for bad, message in [({"stepz": 3}, r"warm_start: unknown keys \['stepz'\]"),
                         ({"steps": 0}, "warm_start: steps=0 must be an integer >= 1"),
                         ({"steps": 10, "warmup_steps": 10}, r"warmup_steps=10 must be in \[0, steps=10\)"),
                         ({"divergence": "kl"}, "Unknown divergence 'kl'"),
                         ({"learning_rate": "fast"}, "learning_rate='fast' must be a number"),
                         (3, "warm_start=3 must be a mapping")]:
        with pytest.raises(DistillSpecError, match=message):
            study(warm_start=bad)
    with pytest.raises(DistillSpecError, match="study-wide settings"):
        study(extra_runs=[{"name": "w", "warm_start": {"steps": 3}}])


def test_a_warm_study_trains_its_baseline_first_and_every_run_starts_from_it(shared_data, tmp_path):
    from distillspec.study import stages
    from distillspec.study.pipeline import plan
    from distillspec.study.rundir import RunPaths, fingerprint

    cfg = StudyConfig.from_yaml(TINY, data_source=str(shared_data), n_train=16, n_eval=4, max_new_tokens=8,
                                train_max_new_tokens=8, max_steps=2, save_steps=2, logging_steps=1,
                                divergences=["lk_alpha"], extra_runs=[], speed=[], draft_vocab=None,
                                warm_start={"steps": 4, "warmup_steps": 1, "batch_size": 4, "text_prompts": 4,
                                            "text_samples": 2, "text_tokens": 8, "eval_every": 0, "eval_prompts": 2})
    steps = [s.executed for s in plan(cfg, tmp_path / "c.yaml", tmp_path)]
    assert steps[:3] == ["01_data.ipynb", "02_distill_baseline.ipynb", "02_distill_lk_alpha.ipynb"]
    stages.prepare_data(cfg, tmp_path)
    with pytest.raises(DistillSpecError, match="warm-started baseline, which is not trained yet"):
        stages.train_draft(cfg, tmp_path, "lk_alpha")
    assert stages.run_settings(cfg, "baseline")["rollout"] == "teacher text (warm start)"
    warm = stages.train_draft(cfg, tmp_path, "baseline")
    assert warm.student_dir == RunPaths(tmp_path).student("baseline")
    assert len(warm_curve(read_log(warm.log_path))) == 2  # eval_every 0: before and after
    import json

    text = [json.loads(x) for x in RunPaths(tmp_path).teacher_text(8).read_text().splitlines()]
    assert [r["prompt"] for r in text[:4]] == [r["prompt"] for r in text[4:]]  # 2 answers per prompt
    assert [r["completion"] for r in text[:4]] != [r["completion"] for r in text[4:]]  # sampled with other seeds
    run = stages.train_draft(cfg, tmp_path, "lk_alpha")
    import yaml

    trained_from = yaml.safe_load((run.output_dir / "config.yaml").read_text())["student"]
    assert trained_from == str(warm.student_dir)
    # the warm start is part of what the records' fingerprint covers
    assert fingerprint(cfg, tmp_path) != fingerprint(cfg.replace(warm_start={**cfg.warm_start, "steps": 5}), tmp_path)


@pytest.mark.slow
def test_the_pipeline_runs_a_warm_study_and_publishes_its_curve(shared_data, tmp_path):
    """python -m distillspec run on a tiny warm study: 02 trains the baseline first (its notebook), every run
    starts from it, 04 draws the curve and states it in results.md, and the baseline's log is published."""
    import yaml

    from distillspec.__main__ import main

    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(data_source=str(shared_data), max_steps=2, save_steps=2, logging_steps=1, n_eval=2, n_train=8,
               max_new_tokens=8, train_max_new_tokens=8, min_bin_count=2, divergences=["lk_alpha"], extra_runs=[],
               speed=[], warm_start={"steps": 4, "warmup_steps": 1, "batch_size": 4, "text_prompts": 8,
                                     "text_tokens": 8, "eval_every": 2, "eval_prompts": 2})
    config = tmp_path / "warm.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run, pub = tmp_path / "run", tmp_path / "pub"
    assert main(["run", "--config", str(config), "--run-dir", str(run), "--publish", str(pub)]) == 0
    assert (run / "02_distill_baseline.ipynb").is_file() and (run / "figures" / "warm_start_gsm8k.png").is_file()
    results = (run / "results.md").read_text()
    assert "Warm start: every draft starts from the baseline, a 1-layer draft" in results
    assert "by step: 0: " in results and ", 4: " in results
    assert (pub / "tiny" / "records" / "baseline_train_log.jsonl").is_file()
    assert (pub / "tiny" / "warm_start_gsm8k.png").is_file()
