"""Faults that used to end in exit code 0 with something untrue: a preset changed under finished work, lengths and
temperatures of zero read as unset, a tampered training log, an export over the run it exports from, a head on a
changed target, two commands on one run directory, a dead kernel, a stop signal to `run`. Each now ends in a clear
error (one `error:` line, exit code 2, or 130 for a stop) or a correct result."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, signal_after_logged_steps
from distillspec import DistillSpecError
from distillspec.__main__ import eval_sampling, main
from distillspec.study.preset import StudyConfig
from distillspec.study.rundir import RunPaths, run_dir_lock


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _changed_copy(config: Path, tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(config.read_text())
    data.update(changes)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    return changed


def _run_copy(tiny_run, tmp_path) -> Path:
    _, run_dir, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    return run


# -- a preset changed under finished work ------------------------------------------------------------------------

def test_a_changed_preset_is_refused_by_train_run_and_retime_naming_the_keys(tiny_run, tmp_path, capsys):
    config, _, _ = tiny_run
    run = _run_copy(tiny_run, tmp_path)
    before = RunPaths(run).config.read_text()
    changed = _changed_copy(config, tmp_path, learning_rate=0.5, gamma=2)
    for argv in (["train", "--draft", "fkl"], ["run", "--publish", str(tmp_path / "pub")],
                 ["retime", "--drafts", "fkl"]):
        assert main([*argv, "--config", str(changed), "--run-dir", str(run)]) == 2, argv
        line = _error_line(capsys)
        assert "learning_rate: 0.005 -> 0.5" in line, line
        assert "gamma: 4 -> 2" in line and "new --run-dir" in line, line
    assert RunPaths(run).config.read_text() == before  # nothing says the new settings
    assert not (tmp_path / "pub").exists()


def test_a_draft_trained_with_other_settings_is_refused_and_retrain_starts_it_again(tiny_run, tmp_path, capsys):
    """The run directory's config.yaml gone (a draft trained by `distill` alone, say): the draft's own settings still
    refuse the changed learning rate, naming it; --retrain trains it again from scratch with the new settings and
    removes its stale records."""
    config, _, _ = tiny_run
    run = _run_copy(tiny_run, tmp_path)
    paths = RunPaths(run)
    paths.config.unlink()
    weights = (paths.student("fkl") / "model.safetensors").read_bytes()
    old_rate = yaml.safe_load((paths.draft_dir("fkl") / "config.yaml").read_text())["learning_rate"]
    changed = _changed_copy(config, tmp_path, learning_rate=old_rate * 3)
    assert main(["train", "--config", str(changed), "--run-dir", str(run), "--draft", "fkl"]) == 2
    line = _error_line(capsys)
    assert "drafts/fkl holds a training run with other settings" in line and "learning_rate" in line, line
    assert "--retrain" in line
    assert yaml.safe_load((paths.draft_dir("fkl") / "config.yaml").read_text())["learning_rate"] == old_rate
    assert main(["train", "--config", str(changed), "--run-dir", str(run), "--draft", "fkl", "--retrain"]) == 0
    assert yaml.safe_load((paths.draft_dir("fkl") / "config.yaml").read_text())["learning_rate"] == old_rate * 3
    assert (paths.student("fkl") / "model.safetensors").read_bytes() != weights
    assert not paths.manifest("fkl").exists() and not paths.tokens("fkl").exists()  # evaluated again by the next run
    assert paths.manifest("rkl").is_file()  # other drafts untouched


def test_distill_refuses_to_resume_with_other_settings(tmp_path, shared_data):
    from distillspec.distillation import distill

    study = StudyConfig.from_yaml("configs/tiny.yaml", data_source=str(shared_data), n_train=4)
    cfg = study.run_config("fkl", max_steps=1, batch_size=2, train_max_new_tokens=3)
    distill(cfg, tmp_path / "d")
    with pytest.raises(DistillSpecError, match=r"other settings \(max_steps: 1 -> 2\).*resume=False"):
        distill(cfg.replace(max_steps=2), tmp_path / "d")
    result = distill(cfg.replace(max_steps=2), tmp_path / "d", resume=False)  # from scratch, replacing the output
    assert result.resumed_from is None
    assert yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())["max_steps"] == 2


# -- eval's flags --------------------------------------------------------------------------------------------------

def _eval_args(**given):
    base = dict(max_new_tokens=None, temperature=None, top_p=None, greedy=False)
    return argparse.Namespace(**{**base, **given})


def test_a_moved_run_directory_keeps_matching_its_drafts_settings(tmp_path):
    """A warm study's drafts start from the run's own baseline: that path is kept relative to the draft, so a run
    directory moved as a whole resumes, while a draft started from another baseline is still refused."""
    from distillspec.training_settings import check_settings, claim

    old, new = tmp_path / "old", tmp_path / "new"

    def settings(root: Path, student: str) -> dict:
        return {"learning_rate": 1e-4, "student": str(root / "drafts" / student / "student")}

    claim(old / "drafts" / "fkl", settings(old, "baseline"), "fix")
    assert yaml.safe_load((old / "drafts" / "fkl" / "config.yaml").read_text())["student"] == "../baseline/student"
    (old / "drafts" / "fkl" / "student").mkdir()  # training output: a mismatch is refused, not started afresh
    old.rename(new)
    check_settings(new / "drafts" / "fkl", settings(new, "baseline"), "fix")
    with pytest.raises(DistillSpecError, match="student: '../baseline/student' -> '../other/student'"):
        check_settings(new / "drafts" / "fkl", settings(new, "other"), "fix")
    outside = {"learning_rate": 1e-4, "student": str(tmp_path.parent / "elsewhere")}
    with pytest.raises(DistillSpecError, match="student"):
        check_settings(new / "drafts" / "fkl", outside, "fix")


def test_a_run_saved_before_a_key_existed_matches_it_at_its_default_only(tmp_path):
    """A draft trained before lookup_ngram and the validation keys existed resumes under settings holding them at
    their defaults (it did what the defaults do); set otherwise, the key is named, read as its default."""
    from distillspec.config import ADDED_KEYS
    from distillspec.training_settings import check_settings, claim

    folder = tmp_path / "drafts" / "fkl"
    claim(folder, {"learning_rate": 1e-4}, "fix")
    (folder / "student").mkdir()
    check_settings(folder, {"learning_rate": 1e-4, **ADDED_KEYS}, "fix")
    with pytest.raises(DistillSpecError, match="validation_prompts: 0 -> 16"):
        check_settings(folder, {"learning_rate": 1e-4, **ADDED_KEYS, "validation_prompts": 16}, "fix")


def test_eval_reads_zero_as_zero_and_the_preset_as_the_default():
    cfg = StudyConfig.from_yaml("configs/tiny.yaml", temperature=0.9, top_p=0.8, max_new_tokens=17)
    sampling, n = eval_sampling(cfg, _eval_args())
    assert (sampling.greedy, sampling.temperature, sampling.top_p, n) == (False, 0.9, 0.8, 17)
    sampling, n = eval_sampling(cfg, _eval_args(temperature=0.0, max_new_tokens=5))
    assert sampling.greedy and n == 5
    sampling, _ = eval_sampling(cfg, _eval_args(temperature=1.3, top_p=0.5))
    assert (sampling.temperature, sampling.top_p) == (1.3, 0.5)


def test_eval_refuses_zero_new_tokens_before_loading_anything(capsys):
    assert main(["eval", "--config", "configs/tiny.yaml", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens 0: must be >= 1" in _error_line(capsys)
    assert main(["eval", "--config", "configs/tiny.yaml", "--temperature", "-1"]) == 2
    assert "--temperature -1.0: must be >= 0" in _error_line(capsys)


# -- published records read back -------------------------------------------------------------------------------------

def test_training_signal_refuses_a_log_that_no_longer_matches_its_manifest(tiny_run, tmp_path, capsys):
    _, _, root = tiny_run
    published = tmp_path / "published"
    shutil.copytree(root / "pub", published)
    assert main(["training-signal", "--published", str(published), "--out", str(tmp_path / "ts")]) == 0
    capsys.readouterr()
    log = next(published.glob("*/records/fkl_train_log.jsonl"))
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")  # the last logged step removed: another 'last expected acceptance'
    assert main(["training-signal", "--published", str(published), "--out", str(tmp_path / "ts2")]) == 2
    line = _error_line(capsys)
    assert "draft 'fkl' does not match its manifest" in line and "fkl_train_log.jsonl" in line, line
    assert not (tmp_path / "ts2" / "training_signal.csv").exists()


def test_a_cut_parquet_file_is_one_error_naming_it(tmp_path):
    import pandas as pd

    from distillspec.atomic import read_parquet, write_parquet

    path = write_parquet(pd.DataFrame({"a": range(100)}), tmp_path / "x_steps.parquet")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DistillSpecError, match=r"x_steps.parquet is damaged"):
        read_parquet(path)


def test_a_damaged_log_line_is_named(tmp_path):
    from distillspec.trainlog import read_log

    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n')
    with pytest.raises(DistillSpecError, match=r"train_log.jsonl:2 is damaged"):
        read_log(tmp_path / "train_log.jsonl")


# -- export never deletes what it exports from ------------------------------------------------------------------------

def test_export_refuses_an_out_that_is_contains_or_lies_inside_training_output(tmp_path, capsys, tokenizer):
    from distillspec.models import save_pretrained_atomic
    from distillspec.tiny import tiny_model

    run = tmp_path / "run"
    draft = run / "drafts" / "fkl" / "student"
    save_pretrained_atomic(tiny_model("qwen3", seed=1, hidden_size=32), tokenizer, draft)
    (draft.parent / "config.yaml").write_text(yaml.safe_dump({"teacher": "tiny-qwen3"}))
    (draft.parent / "train_log.jsonl").write_text('{"step": 1}\n')
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "x", "gamma": 4}))
    for out, says in ((draft.parent, "contains the draft"), (draft, "is the draft"), (run, "contains the draft"),
                      (tmp_path, "contains the draft"), (run / "exports" / "fkl", "lies inside a run directory"),
                      (draft.parent / "export", "lies inside a training run")):
        assert main(["export", "--draft", str(draft), "--out", str(out), "--force", "--gamma", "3"]) == 2, out
        line = _error_line(capsys)
        assert says in line, (out, line)
    other = tmp_path / "elsewhere"
    (other / "old_run").mkdir(parents=True)
    (other / "old_run" / "train_log.jsonl").write_text("{}\n")
    assert main(["export", "--draft", str(draft), "--out", str(other), "--force", "--gamma", "3"]) == 2
    assert "contains a training run" in _error_line(capsys)
    assert (draft / "config.json").is_file() and (draft.parent / "train_log.jsonl").is_file()


# -- a feature head and its target -------------------------------------------------------------------------------------

def test_a_head_refuses_a_target_with_any_layer_changed(tmp_path):
    import copy

    import torch

    from distillspec.eagle import EagleHead, load_head, save_head
    from distillspec.tiny import tiny_model

    target = tiny_model("qwen3", seed=1, hidden_size=32)
    save_head(EagleHead(target), tmp_path / "head")
    assert load_head(tmp_path / "head", copy.deepcopy(target).to(torch.bfloat16)) is not None  # same weights, bf16
    changed = copy.deepcopy(target)
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight[0, 0] += 0.5  # one weight of the last layer
    with pytest.raises(DistillSpecError, match=r"trained for another target \(the target's parameters differ"):
        load_head(tmp_path / "head", changed)


# -- one command at a time on a run directory -------------------------------------------------------------------

def test_a_second_command_on_a_busy_run_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from distillspec.study.rundir import "
                              "run_dir_lock\nwith run_dir_lock(sys.argv[1], 'train --draft fkl'):\n print('held', "
                              "flush=True); time.sleep(60)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        for argv in (["train", "--draft", "fkl"], ["run"], ["retime", "--drafts", "fkl"]):
            assert main([*argv, "--config", "configs/tiny.yaml", "--run-dir", str(run)]) == 2
            line = _error_line(capsys)
            assert f"is in use by `python -m distillspec train --draft fkl` (pid {child.pid})" in line, line
    finally:
        child.kill()
        child.wait()
    with run_dir_lock(run, "run"):  # the lock went with the process that held it
        pass


# -- the notebooks' kernels ------------------------------------------------------------------------------------------

def _notebooks(tmp_path: Path, source: str) -> Path:
    """A workbook whose 01 runs `source` (the pipeline's plan needs only 01 to exist to start)."""
    import nbformat

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("01_data", "02_distill", "03_specdec_eval", "04_entropy_analysis"):
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                               "display_name": "Python 3"}})
        nb.cells = [nbformat.v4.new_code_cell("config_path = run_dir = None", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(source if name == "01_data" else "pass")]
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


@pytest.mark.slow
def test_a_dead_kernel_is_one_line_naming_the_notebook(tmp_path, monkeypatch, capfd, shared_data):
    monkeypatch.setenv("DISTILLSPEC_NOTEBOOKS", str(_notebooks(tmp_path, "import os; os.kill(os.getpid(), 9)")))
    assert main(["run", "--config", "configs/tiny.yaml", "--run-dir", str(tmp_path / "run")]) == 2
    out, err = capfd.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "The kernel running 01_data.ipynb died" in lines[0], err[-2000:]
    assert "kernel.log" in lines[0]
    assert "Traceback" not in err and "KeyboardInterrupt" not in out + err


@pytest.mark.slow
def test_sigterm_to_run_checkpoints_the_training_and_exits_130(tmp_path, shared_data):
    """SIGTERM to `run` while 02 trains: passed on to the kernel, which checkpoints and stops; the run exits 130 with
    one line and no kernel traceback; the same command resumes from the checkpoint."""
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.update(data_source=str(shared_data), max_steps=40, save_steps=100, logging_steps=1, n_train=32, n_eval=2,
               max_new_tokens=8, train_max_new_tokens=8, divergences=["fkl"], extra_runs=[])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "distillspec", "run", "--config", str(config), "--run-dir",
                             str(run)], env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = run / "drafts" / "fkl" / "train_log.jsonl"
    signal_after_logged_steps(proc, log, 3, 400, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    errors = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "02_distill_fkl.ipynb stopped by SIGTERM" in errors[0], err[-3000:]
    assert "TrainingInterrupted" in errors[0] and "resume" in errors[0]
    assert "Traceback" not in err and "ZMQError" not in err and "KeyboardInterrupt caught" not in out + err
    checkpoints = list((run / "drafts" / "fkl").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (run / "drafts" / "fkl" / "student").exists()
    assert json.loads(log.read_text().splitlines()[-1])["step"] <= 40
