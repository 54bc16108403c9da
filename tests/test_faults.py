"""Faults a user can cause or meet, injected on the tiny preset: damaged records, bad config files, an export over
someone's folder, paths that cannot be written, a damaged data file, and a training run stopped by a signal. Each
ends in a repaired result or one `error:` line that names the file, never in silently reused or lost work."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, signal_after_logged_steps
from distillspec import DistillSpecError
from distillspec.__main__ import main
from distillspec.study.handoff import import_records
from distillspec.study.manifest import run_damage
from distillspec.study.pipeline import publish
from distillspec.study.preset import StudyConfig
from distillspec.study.rundir import RunPaths


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _truncate(path: Path, size: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:size])


@pytest.mark.slow
def test_damaged_records_are_evaluated_again_not_reused(tiny_run, tmp_path, capsys):
    """The speed row cut to 60 bytes and a token file cut in half: the rerun evaluates both drafts again (03 is not
    skipped), 04 runs on the new records, and what is published is intact."""
    config, run_dir, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    paths = RunPaths(run)
    first = json.loads(paths.speed_row("baseline").read_text())
    _truncate(paths.speed_row("baseline"), 60)
    _truncate(paths.tokens("fkl"), paths.tokens("fkl").stat().st_size // 2)
    assert len(run_damage(paths, "baseline")) == 1 and len(run_damage(paths, "fkl")) == 1
    cfg = StudyConfig.from_yaml(config)
    with pytest.raises(DistillSpecError, match=r"Not publishing .*baseline_speed.json has 60 bytes"):
        publish(cfg, run, tmp_path / "refused")
    assert not (tmp_path / "refused" / cfg.name / "records").exists()
    assert main(["run", "--config", str(config), "--run-dir", str(run), "--drafts", "baseline,fkl",
                 "--publish", str(tmp_path / "pub")]) == 0
    out = capsys.readouterr().out
    assert "run  03_specdec_eval.ipynb" in out and "run  04_entropy_analysis.ipynb" in out
    assert run_damage(paths, "baseline") == [] and run_damage(paths, "fkl") == []
    again = json.loads(paths.speed_row("baseline").read_text())
    assert again["fingerprint"] == first["fingerprint"]
    published = tmp_path / "pub" / cfg.name / "records"
    assert (published / "baseline_manifest.json").is_file()
    assert json.loads((published / "baseline_speed.json").read_text())["fingerprint"] == first["fingerprint"]


def test_damaged_published_records_are_refused_on_import(tiny_run, tmp_path):
    config, run_dir, root = tiny_run
    published = tmp_path / "records"
    shutil.copytree(next((root / "pub").glob("*/records")), published)
    _truncate(published / "fkl_steps.parquet", 100)
    run = tmp_path / "run"
    shutil.copytree(RunPaths(run_dir).root / "data", run / "data")
    with pytest.raises(DistillSpecError, match=r"draft 'fkl' cannot be imported: .*fkl_steps.parquet has 100 bytes"):
        import_records(StudyConfig.from_yaml(config), run, published, ["baseline", "fkl"])
    (published / "fkl_manifest.json").unlink()  # no manifest: the draft is not finished, whatever else is there
    with pytest.raises(DistillSpecError, match="fkl_manifest.json is missing"):
        import_records(StudyConfig.from_yaml(config), run, published, ["fkl"])


def test_an_imported_draft_damaged_in_the_run_is_imported_again(tiny_run, tmp_path):
    """An imported draft has no model here to evaluate again, so its damaged copy is replaced by importing it
    again; an intact one is left alone."""
    config, run_dir, root = tiny_run
    published = next((root / "pub").glob("*/records"))
    run = tmp_path / "run"
    shutil.copytree(RunPaths(run_dir).root / "data", run / "data")
    cfg = StudyConfig.from_yaml(config)
    assert import_records(cfg, run, published, ["baseline", "fkl"]) == ["baseline", "fkl"]
    paths = RunPaths(run)
    _truncate(paths.tokens("fkl"), 50)
    assert import_records(cfg, run, published, ["baseline", "fkl"]) == ["fkl"]
    assert run_damage(paths, "fkl") == [] and run_damage(paths, "baseline") == []


def test_records_stay_importable_when_the_study_gains_or_drops_other_runs(tiny_run, tmp_path):
    """A draft's fingerprint covers the study-wide settings and its own run: a preset that adds a run or drops
    another still imports its published records; one that changes what made the draft refuses them; a record
    carrying the whole study's fingerprint (version 3) is still taken."""
    from distillspec.study.manifest import write_manifest
    from distillspec.study.rundir import fingerprint

    config, run_dir, root = tiny_run
    published = tmp_path / "records"
    shutil.copytree(next((root / "pub").glob("*/records")), published)
    cfg = StudyConfig.from_yaml(config)

    def fresh(name: str) -> Path:  # a run directory holding the study's prompt sets only
        shutil.copytree(RunPaths(run_dir).root / "data", tmp_path / name / "data")
        return tmp_path / name

    grown = cfg.replace(divergences=["fkl"], extra_runs=[*cfg.extra_runs, {"name": "lookup", "draft_kind": "lookup"}])
    assert import_records(grown, fresh("grown"), published, ["baseline", "fkl"]) == ["baseline", "fkl"]
    with pytest.raises(DistillSpecError, match=r"fkl_speed.json was made with another config"):
        import_records(cfg.replace(learning_rate=cfg.learning_rate / 2), fresh("changed"), published, ["fkl"])
    older = fresh("older")
    row = json.loads((published / "fkl_speed.json").read_text())
    (published / "fkl_speed.json").write_text(json.dumps({**row, "fingerprint": fingerprint(cfg, older)}))
    listed = json.loads((published / "fkl_manifest.json").read_text())["files"]
    write_manifest({name: published / name for name in listed}, published / "fkl_manifest.json")
    assert import_records(cfg, older, published, ["fkl"]) == ["fkl"]
    with pytest.raises(DistillSpecError, match=r"fkl_speed.json was made with another config"):
        import_records(grown, fresh("grown_older"), published, ["fkl"])  # version 3 covers every run...
    cfg.to_yaml(tmp_path / "config.yaml")  # ...of the preset published beside the records, which had other runs
    assert import_records(grown, fresh("grown_beside"), published, ["fkl"]) == ["fkl"]
    with pytest.raises(DistillSpecError, match=r"fkl_speed.json was made with another config"):
        import_records(grown.replace(learning_rate=cfg.learning_rate / 2), fresh("changed_beside"), published,
                       ["fkl"])


def test_a_run_directory_takes_a_preset_that_gains_runs_but_not_one_that_drops_its_work(tiny_run, tmp_path):
    """Runs added to a preset join its run directory; a run with work there that the preset drops, or any other
    setting changed, is refused with the way out named; the directory keeps the settings it had."""
    from distillspec.study.handoff import bind_config

    from distillspec.atomic import write_json
    from distillspec.study.manifest import seal
    from distillspec.study.rundir import fingerprint

    config, run_dir, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg, paths = StudyConfig.from_yaml(config), RunPaths(run)
    row = json.loads(paths.speed_row("fkl").read_text())
    write_json({**row, "fingerprint": fingerprint(cfg, run)}, paths.speed_row("fkl"))  # as version 3 wrote it
    seal(paths, "fkl")
    saved = (run / "config.yaml").read_text()
    for other, message in ((cfg.replace(divergences=["fkl"]), r"work of runs this preset drops or changes \(rkl\)"),
                           (cfg.replace(learning_rate=0.001), r"other settings than this preset's \(learning_rate")):
        with pytest.raises(DistillSpecError, match=message):
            bind_config(other, run)
        assert (run / "config.yaml").read_text() == saved
    grown = cfg.replace(extra_runs=[*cfg.extra_runs, {"name": "lookup", "draft_kind": "lookup"}])
    bind_config(grown, run)
    assert "name: lookup" in (run / "config.yaml").read_text()
    # the version-3 record now carries the draft's own fingerprint, sealed again
    assert json.loads(paths.speed_row("fkl").read_text())["fingerprint"] == fingerprint(grown, run, "fkl")
    assert run_damage(paths, "fkl") == []
    bind_config(grown, run)  # and is the directory's preset from then on
    with pytest.raises(DistillSpecError, match=r"drops or changes \(skd\)"):
        bind_config(grown.replace(extra_runs=[r for r in grown.extra_runs if r["name"] != "skd"]), run)


@pytest.mark.parametrize("text, message", [
    ("", r"empty.yaml is empty: a preset needs"),
    ("- fkl\n- rkl\n", r"must hold a YAML mapping of config keys, not a list"),
    ("name: x\nlearning_rate: [1e-4\nmax_steps: 3\n", r"empty.yaml:\d+:\d+: not valid YAML"),
])
def test_bad_config_files_give_one_line_naming_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--draft", "fkl"]) == 2
    line = _error_line(capsys)
    assert str(path.parent) in line and __import__("re").search(message, line), line


def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path, capsys, shared_data):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["run", "--config", "configs/tiny.yaml", "--run-dir", str(blocker / "run")]) == 2
    line = _error_line(capsys)
    assert str(blocker) in line and "pick another" in line


def test_a_damaged_data_file_names_its_line(tmp_path):
    from distillspec.data import load_prompts

    (tmp_path / "gsm8k").mkdir()
    good = (REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()[:3]
    (tmp_path / "gsm8k" / "test.jsonl").write_text("\n".join(good) + "\n" + good[0][: len(good[0]) // 2] + "\n")
    with pytest.raises(DistillSpecError, match=r"test.jsonl: line 4 is not a JSON object"):
        load_prompts("gsm8k", "test", 2, source=tmp_path)


def test_export_never_deletes_a_folder_it_did_not_write(tmp_path, capsys, tokenizer):
    from distillspec.models import save_pretrained_atomic
    from distillspec.tiny import tiny_model

    draft = tmp_path / "run" / "drafts" / "fkl" / "student"
    save_pretrained_atomic(tiny_model("qwen3", seed=1, hidden_size=32), tokenizer, draft)
    (draft.parent / "config.yaml").write_text(yaml.safe_dump({"teacher": "tiny-qwen3"}))
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"name": "x", "gamma": 4}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated.txt").write_text("keep")
    assert main(["export", "--draft", str(draft), "--to", "vllm", "--out", str(out)]) == 2
    assert "not empty and holds no earlier export" in _error_line(capsys) and (out / "unrelated.txt").is_file()
    old = os.umask(0o022)
    try:
        assert main(["export", "--draft", str(draft), "--to", "vllm", "--out", str(tmp_path / "new")]) == 0
        assert main(["export", "--draft", str(draft), "--to", "vllm", "--out", str(tmp_path / "new")]) == 0  # again
    finally:
        os.umask(old)
    new = tmp_path / "new"
    assert stat.S_IMODE(new.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in new.iterdir()} == {0o644}
    usage = (new / "USAGE.md").read_text()
    assert '"num_speculative_tokens": 4' in usage and str(tmp_path / "run" / "config.yaml") in usage
    assert main(["export", "--draft", str(draft), "--out", str(out), "--force"]) == 0
    assert not (out / "unrelated.txt").exists() and (out / "config.json").is_file()


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["eval", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "Config file not found" in _error_line(capsys)
    with pytest.raises(DistillSpecError):
        main(["eval", "--config", str(tmp_path / "missing.yaml"), "--debug"])


def _train(config: Path, run_dir: Path, watch: bool = False) -> subprocess.Popen:
    """`python -m distillspec train` of the config's fkl run; watch: keep its stderr to read (else discarded)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "distillspec", "train", "--config", str(config), "--draft", "fkl",
                             "--run-dir", str(run_dir)], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if watch else subprocess.DEVNULL)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, shared_data):
    """SIGTERM mid-training: the step finishes, a checkpoint is saved at it (save_steps would save none before the
    end), the command exits 130 saying how to resume; rerunning it resumes from that step and ends with the weights
    of a run never interrupted."""
    from safetensors.torch import load_file

    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.update(data_source=str(shared_data), max_steps=12, save_steps=100, logging_steps=1, n_train=32, n_eval=2,
               max_new_tokens=8, train_max_new_tokens=8, divergences=["fkl"], extra_runs=[])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    proc = _train(config, stopped, watch=True)
    log = stopped / "drafts" / "fkl" / "train_log.jsonl"
    signal_after_logged_steps(proc, log, 3, 240, signal.SIGTERM)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by SIGTERM after step" in err and "run the same command again to resume" in err
    checkpoints = sorted((stopped / "drafts" / "fkl").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (stopped / "drafts" / "fkl" / "student").exists()
    at = int(checkpoints[0].name.split("-")[1])
    assert 3 <= at < 12
    assert _train(config, stopped).wait(timeout=600) == 0
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps.count(1) == 1 and at + 1 in steps  # the rerun went on from the signal's step, not from 0
    assert _train(config, straight).wait(timeout=600) == 0
    resumed = load_file(stopped / "drafts" / "fkl" / "student" / "model.safetensors")
    plain = load_file(straight / "drafts" / "fkl" / "student" / "model.safetensors")
    assert resumed.keys() == plain.keys() and all((resumed[k] == plain[k]).all() for k in plain)


def test_a_checkpoint_is_saved_after_save_minutes_of_training(tmp_path, shared_data):
    """Slow steps: with save_steps beyond the run, save_minutes still checkpoints (here after every step)."""
    from distillspec.distillation import distill

    cfg = StudyConfig.from_yaml("configs/tiny.yaml", data_source=str(shared_data), n_train=8).run_config(
        "fkl", max_steps=3, save_steps=100, save_minutes=1e-6, batch_size=2, train_max_new_tokens=4)
    distill(cfg, tmp_path / "d")
    assert (tmp_path / "d" / "checkpoint-3").is_dir() and (tmp_path / "d" / "checkpoint-2").is_dir()


def test_warnings_in_a_notebook_reach_the_terminal(tiny_run):
    from distillspec.study.pipeline import notebook_warnings

    _, run_dir, _ = tiny_run
    notebook = run_dir / "01_data.ipynb"
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output(
        "stream", name="stderr", text="/x/data.py:201: UserWarning: Asked for 100000 gsm8k test prompts, only "
                                      "1319 are available after filtering.\n  warnings.warn(\n")]
    copy = run_dir.parent / "warned.ipynb"
    nbformat.write(nb, copy)
    assert notebook_warnings(copy) == ["UserWarning: Asked for 100000 gsm8k test prompts, only 1319 are available "
                                       "after filtering."]
