"""The warm start: a derived draft trained off-policy on its teacher's text before on-policy distillation. It
raises the draft's served acceptance, records its curve, resumes to the same weights, refuses bad settings, and a
study with one trains its baseline first and starts every run from it; a part of it on another machine trains the
warm draft again beside the imported baseline records, checked against them."""

import json

import pytest
import torch

from distillspec import DistillSpecError
from distillspec.config import Config
from distillspec.models import draft_from_teacher
from distillspec.config import Optimisation
from distillspec.offline_loop import train_offline
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
    settings = Optimisation(max_steps=6, batch_size=4, learning_rate=1e-2, save_steps=2, logging_steps=1)

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
    text = [json.loads(x) for x in RunPaths(tmp_path).teacher_text(8).read_text().splitlines()]
    assert [r["prompt"] for r in text[:4]] == [r["prompt"] for r in text[4:]]  # 2 answers per prompt
    assert [r["completion"] for r in text[:4]] != [r["completion"] for r in text[4:]]  # sampled with other seeds
    run = stages.train_draft(cfg, tmp_path, "lk_alpha")
    import yaml

    trained_from = yaml.safe_load((run.output_dir / "config.yaml").read_text())["student"]
    assert trained_from == "../baseline/student"  # kept relative to the draft: a moved run directory still matches
    assert (run.output_dir / trained_from).resolve() == warm.student_dir.resolve()
    # the warm start is part of what the records' fingerprint covers
    assert fingerprint(cfg, tmp_path) != fingerprint(cfg.replace(warm_start={**cfg.warm_start, "steps": 5}), tmp_path)


@pytest.mark.slow
def test_the_pipeline_runs_a_warm_study_in_parts_and_publishes_its_curve(shared_data, tmp_path, capsys):
    """python -m distillspec run on a tiny warm study in two parts: the first trains and evaluates the baseline
    (its notebook); the second, in a fresh run directory, imports its records, trains the warm draft again beside
    them, starts its run from it and, with every draft evaluated, runs 04, which draws the curve and states it in
    results.md; the baseline's records are published as the first part made them."""
    import yaml

    from distillspec.__main__ import main

    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(data_source=str(shared_data), max_steps=2, save_steps=2, logging_steps=1, n_eval=2, n_train=8,
               max_new_tokens=8, train_max_new_tokens=8, min_bin_count=2, divergences=["lk_alpha"], extra_runs=[],
               speed=[], warm_start={"steps": 4, "warmup_steps": 1, "batch_size": 4, "text_prompts": 8,
                                     "text_tokens": 8, "eval_every": 2, "eval_prompts": 2})
    config = tmp_path / "warm.yaml"
    config.write_text(yaml.safe_dump(cfg))
    first, run, pub = tmp_path / "first", tmp_path / "run", tmp_path / "pub"
    records = pub / "tiny" / "records"
    assert main(["run", "--config", str(config), "--run-dir", str(first), "--publish", str(pub),
                 "--drafts", "baseline"]) == 0
    assert "wait 04_entropy_analysis.ipynb: drafts lk_alpha are not evaluated yet" in capsys.readouterr().out
    made = {p.name: p.read_bytes() for p in records.glob("baseline_*")}
    assert "baseline_train_log.jsonl" in made and "baseline_manifest.json" in made
    assert main(["run", "--config", str(config), "--run-dir", str(run), "--publish", str(pub),
                 "--drafts", "lk_alpha", "--results-from", str(records)]) == 0
    assert "imported finished drafts from" in capsys.readouterr().out
    assert (run / "drafts" / "baseline" / "retrained" / "train_log.jsonl").is_file()  # trained again, apart
    retrain = (run / "02_distill_baseline.ipynb").read_text()
    assert "warm draft trained again: it matches the baseline's records" in retrain
    assert (run / "02_distill_lk_alpha.ipynb").is_file() and (run / "figures" / "warm_start_gsm8k.png").is_file()
    results = (run / "results.md").read_text()
    assert ("Warm start: every draft starts from the baseline, a draft derived from the teacher (1 of its layers)"
            in results)
    assert "by step: 0: " in results and ", 4: " in results
    assert {p.name: p.read_bytes() for p in records.glob("baseline_*")} == made
    assert (pub / "tiny" / "warm_start_gsm8k.png").is_file()


def test_a_part_that_imports_the_baseline_trains_the_warm_draft_again_beside_its_records(shared_data, tmp_path):
    """A warm study in parts: another machine imports the baseline's records (its evaluation and train log) and
    trains the warm draft again for its runs to start from; the retrain is checked against the records' log and
    kept apart, so the records stay intact, published as they came, and are not evaluated again. Only drafts with
    a model here are decoded (03's example): an imported one has records only."""
    from distillspec.study import stages
    from distillspec.study.handoff import import_records, publish_records
    from distillspec.study.manifest import run_damage
    from distillspec.study.rundir import RunPaths, draft_names

    cfg = StudyConfig.from_yaml(TINY, data_source=str(shared_data), n_train=8, n_eval=2, max_new_tokens=8,
                                train_max_new_tokens=8, max_steps=2, save_steps=2, logging_steps=1,
                                divergences=["lk_alpha"], extra_runs=[], speed=[], draft_vocab=None,
                                warm_start={"steps": 4, "warmup_steps": 1, "batch_size": 4, "text_prompts": 4,
                                            "text_tokens": 8, "eval_every": 0, "eval_prompts": 2})
    first, second, pub = tmp_path / "first", tmp_path / "second", tmp_path / "pub"
    stages.prepare_data(cfg, first)
    stages.train_draft(cfg, first, "baseline")
    stages.evaluate_drafts(cfg, first, ["baseline"])
    publish_records(first, pub, ["baseline"])
    stages.prepare_data(cfg, second)  # the same seeded prompts
    assert import_records(cfg, second, pub, draft_names(cfg)) == ["baseline"]
    paths = RunPaths(second)

    def held():  # the baseline's records in the run: its evaluation and its train log
        return {p.name: p.read_bytes() for p in paths.records.glob("baseline_*")} | {
            "log": paths.train_log("baseline").read_bytes()}

    records = held()
    warm = stages.train_draft(cfg, second, "baseline")
    assert warm.student_dir == paths.student("baseline") and (paths.student("baseline") / "config.json").is_file()
    assert warm.log_path == paths.warm_retrain / "train_log.jsonl"
    assert run_damage(paths, "baseline") == []
    stages.evaluate_drafts(cfg, second, ["baseline"])  # imported and intact: not evaluated again
    assert held() == records
    assert stages.drafts_here(cfg, second, ["lk_alpha", "baseline"]) == ["baseline"]
    # a retrain that does not match is refused and kept; with the imported records deleted it becomes the baseline
    third = tmp_path / "third"
    stages.prepare_data(cfg, third)
    import_records(cfg, third, pub, ["baseline"])
    other = RunPaths(third)
    log = other.train_log("baseline")  # as if the records came from a run at another learning rate
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({**r, **({"learning_rate": 2 * r["learning_rate"]} if "learning_rate" in r
                                                 else {})}) + "\n" for r in rows))
    with pytest.raises(DistillSpecError, match=r"not the one the imported baseline records describe .* learning_rate"):
        stages.train_draft(cfg, third, "baseline")
    for record in other.records.glob("baseline_*"):
        record.unlink()
    assert import_records(cfg, third, pub, ["baseline"]) == []  # the retrain is kept, not replaced by an import
    adopted = stages.train_draft(cfg, third, "baseline")
    assert adopted.log_path == other.train_log("baseline") and not other.warm_retrain.exists()
    assert (other.student("baseline") / "config.json").is_file()
    schedule = read_log(pub / "baseline_train_log.jsonl")["learning_rate"].dropna().tolist()
    assert read_log(adopted.log_path)["learning_rate"].dropna().tolist() == schedule  # its own log, not the edited one
    run = stages.train_draft(cfg, second, "lk_alpha")
    assert stages.drafts_here(cfg, second, ["lk_alpha", "baseline"]) == ["lk_alpha", "baseline"]
    import yaml

    trained_from = yaml.safe_load((run.output_dir / "config.yaml").read_text())["student"]
    assert (run.output_dir / trained_from).resolve() == paths.student("baseline").resolve()


def test_a_warm_draft_trained_again_is_refused_unless_it_matches_the_records_log(tmp_path):
    from distillspec.study.handoff import check_retrained_warm_start

    def log(name, **change):
        rows = [{"step": 0, "alpha_pos": 0.1}] + [
            {"step": s, "loss": 2.0 / s, "teacher_entropy": 1.0 + s / 100, "learning_rate": 1e-3 * s} for s in (5, 10)]
        for row in rows[1:]:
            row.update({k: f(row) for k, f in change.items()})
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    records = log("records")
    close = log("close", loss=lambda r: r["loss"] * 1.01)  # float rounding on another machine
    assert "loss within 1.00% on average" in check_retrained_warm_start(records, close)
    lr_doubled = {"learning_rate": lambda r: r["learning_rate"] * 2}
    for change, message in [({"loss": lambda r: r["loss"] * 1.2}, r"its loss differs by 20.0% on average"),
                            ({"teacher_entropy": lambda r: r["teacher_entropy"] + 0.01}, "at step 5 its teacher_ent"),
                            (lr_doubled, "at step 5 its learning_rate is 0.01 against 0.005")]:
        with pytest.raises(DistillSpecError, match=rf"not the one the imported baseline records describe .*{message}"):
            check_retrained_warm_start(records, log("other", **change))
