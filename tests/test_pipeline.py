"""The workbook end to end on the tiny preset, through the same entry point as `make run`."""

import json
import os
import shutil

import nbformat
import pandas as pd
import pytest
import yaml

from distillspec import DistillSpecError
from distillspec.__main__ import main
from distillspec.records import TOKEN_COLUMNS
from distillspec.runtime import machine
from distillspec.speed import StepCosts

RUNS = ["fkl", "rkl", "skd", "eagle"]  # the tiny preset's runs: on-policy both ways, SKD, and a feature head


def _weights(run_dir, run):
    """A trained student's weights file (a draft's model.safetensors or a head's eagle_head.safetensors)."""
    (file,) = (run_dir / "drafts" / run / "student").glob("*.safetensors")
    return file


def _errors(path):
    nb = nbformat.read(path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


def test_every_notebook_ran_without_errors(tiny_run):
    _, run_dir, _ = tiny_run
    names = ["01_data", *[f"02_distill_{r}" for r in RUNS], "03_specdec_eval", "04_entropy_analysis"]
    for name in names:
        path = run_dir / f"{name}.ipynb"
        assert path.is_file(), name
        assert _errors(path) == [], name


def test_executed_notebooks_open_trusted_with_widgets_and_without_library_noise(tiny_run):
    """Signed for this user's Jupyter (so JupyterLab renders their widgets), widget state saved, and no third-party
    warnings or load/save progress bars among the outputs."""
    from nbformat.sign import NotebookNotary

    _, run_dir, _ = tiny_run
    notary = NotebookNotary()
    executed = sorted(run_dir.glob("*.ipynb"))
    assert len(executed) == 3 + len(RUNS)
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        assert notary.check_signature(nb), path.name
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
        assert stderr == [], (path.name, stderr)
        texts = " ".join(o.get("data", {}).get("text/plain", "") for o in outputs)
        assert "Loading weights" not in texts and "Writing model shards" not in texts, path.name
    saved = {"03_specdec_eval": {"FloatProgressModel"},  # tqdm's bars
             "04_entropy_analysis": {"SelectionSliderModel", "DropdownModel", "StackModel", "LinkModel"}}
    for name, needed in saved.items():
        state = nbformat.read(run_dir / f"{name}.ipynb", as_version=4).metadata.widgets
        models = {m["model_name"] for m in state["application/vnd.jupyter.widget-state+json"]["state"].values()}
        assert needed <= models, (name, models)


def test_artifacts_are_well_formed(tiny_run):
    _, run_dir, root = tiny_run
    for draft in ["baseline", *RUNS]:
        tokens = pd.read_parquet(run_dir / "records" / f"{draft}_tokens.parquet")
        assert list(tokens.columns) == list(TOKEN_COLUMNS) and len(tokens) > 0
        assert tokens["row"].nunique() == 4
        steps = pd.read_parquet(run_dir / "records" / f"{draft}_steps.parquet")
        assert list(steps.columns) == ["row", "step", "proposed", "accepted", "emitted"]
    summary = pd.read_csv(run_dir / "summary.csv")
    assert summary["draft"].tolist() == ["baseline", *RUNS]
    for col in ("alpha_tok", "alpha_tok_lo", "alpha_tok_hi", "alpha_pos", "tau", "speedup", "n_prompts", "n_tokens"):
        assert col in summary and summary[col].notna().all(), col
    assert (summary["alpha_tok_lo"] <= summary["alpha_tok"]).all()
    for col in ("sd_expected_accept_t1", "own_sample_expected_accept"):  # the two acceptance views of 03
        drafts = summary if col == "sd_expected_accept_t1" else summary[summary["draft"] != "eagle"]
        assert drafts[col].between(0, 1).all(), col
    assert summary.loc[summary["draft"] == "eagle", "own_sample_expected_accept"].isna().all()  # a head cannot
    # write alone, so it has no own samples
    published = root / "pub" / yaml.safe_load((run_dir / "config.yaml").read_text())["name"]
    for png in ["acceptance_vs_entropy_gsm8k.png", "training_curves_gsm8k.png"]:
        for where in (run_dir / "figures", published):
            data = (where / png).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    results = (published / "results.md").read_text()
    assert results.count("| baseline |") == 4  # Table 1, expected acceptance, and the two timed settings
    assert "| baseline | greedy, batch 1 |" in results and "| fkl | T=0.6, batch 2 |" in results
    assert (published / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "data" / "summary.json").read_text())["n_eval"] == 4


def test_resume_after_02_continues_at_03_without_retraining_or_reevaluating(tiny_run):
    config, run_dir, _ = tiny_run
    students = {r: os.path.getmtime(_weights(run_dir, r)) for r in RUNS}
    notebooks = {r: os.path.getmtime(run_dir / f"02_distill_{r}.ipynb") for r in RUNS}
    # simulate an interruption inside 03, after the baseline's evaluation and before the last draft's finished
    last = RUNS[-1]
    for p in ["speed.parquet", "results.md", "summary.csv", "03_specdec_eval.ipynb", "04_entropy_analysis.ipynb",
              f"records/{last}_speed.json"]:
        (run_dir / p).unlink()
    baseline_records = os.path.getmtime(run_dir / "records" / "baseline_tokens.parquet")
    last_records = os.path.getmtime(run_dir / "records" / f"{last}_tokens.parquet")
    first = RUNS[0]  # a draft retrained after its evaluation must be evaluated again
    first_records = os.path.getmtime(run_dir / "records" / f"{first}_tokens.parquet")
    retrained = os.path.getmtime(run_dir / "records" / f"{first}_speed.json") + 10  # after its last record
    student_config = run_dir / "drafts" / first / "student" / "config.json"
    os.utime(student_config, (retrained, retrained))
    assert main(["run", "--config", str(config), "--run-dir", str(run_dir)]) == 0
    assert os.path.getmtime(run_dir / "records" / "baseline_tokens.parquet") == baseline_records  # kept
    assert os.path.getmtime(run_dir / "records" / f"{last}_tokens.parquet") > last_records  # redone
    assert os.path.getmtime(run_dir / "records" / f"{first}_tokens.parquet") > first_records  # stale: redone
    assert pd.read_csv(run_dir / "summary.csv")["draft"].tolist() == ["baseline", *RUNS]
    assert (run_dir / "speed.parquet").is_file() and (run_dir / "results.md").is_file()
    for r in RUNS:
        assert os.path.getmtime(_weights(run_dir, r)) == students[r]  # not retrained
        assert os.path.getmtime(run_dir / f"02_distill_{r}.ipynb") == notebooks[r]


def test_failing_notebook_names_itself(tmp_path, shared_data):
    from distillspec.study.pipeline import run_pipeline

    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg.update(data_source=str(tmp_path / "no-data-here"))
    config = tmp_path / "broken.yaml"
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DistillSpecError, match=r"Notebook 01_data.ipynb failed in cell .*Data directory not found"):
        run_pipeline(config, run_dir=tmp_path / "run", log=lambda *_: None)


def test_eval_command_writes_records(tmp_path, shared_data, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--teacher", "tiny-qwen3", "--keep-layers", "1", "--n", "2", "--max-new-tokens", "6",
                 "--data", str(shared_data), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"tokens.parquet", "steps.parquet", "metrics.json"}
    assert '"alpha_tok"' in capsys.readouterr().out
    assert main(["eval", "--teacher", "tiny-qwen3", "--gamma", "0", "--data", str(shared_data),
                 "--out", str(out)]) == 2
    assert main(["eval", "--teacher", "tiny-qwen3", "--keep-layers", "1", "--n", "2", "--max-new-tokens", "6",
                 "--data", str(shared_data), "--out", str(out), "--draft-tree", "0|1|0.0"]) == 0
    assert set(pd.read_parquet(out / "steps.parquet")["proposed"]) == {3}  # every step verified the tree's 3 nodes
    capsys.readouterr()
    assert main(["eval", "--teacher", "tiny-qwen3", "--draft-tree", "0|x", "--data", str(shared_data),
                 "--out", str(out)]) == 2
    assert "write rank paths separated by '|'" in capsys.readouterr().err


def test_eval_with_a_config_decodes_its_own_prompts(tmp_path, shared_data, monkeypatch, capsys):
    """`eval --config` reads the preset's data_source, as 01 does, not $DISTILLSPEC_DATA_DIR (or the hub)."""
    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg.update(data_source=str(shared_data))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("DISTILLSPEC_DATA_DIR", str(tmp_path / "not-here"))
    assert main(["eval", "--config", str(config), "--n", "2", "--max-new-tokens", "6",
                 "--out", str(tmp_path / "eval")]) == 0
    assert '"alpha_tok"' in capsys.readouterr().out
    assert main(["eval", "--config", str(config), "--data", str(tmp_path / "not-here"), "--n", "2"]) == 2
    assert "Data directory not found" in capsys.readouterr().err


def test_papermill_parses_every_parameter():
    """papermill drops (and warns about) parameter lines it cannot parse; every one must parse."""
    from papermill.inspection import inspect_notebook

    expected = {"01_data": {"config_path", "run_dir"}, "03_specdec_eval": {"config_path", "run_dir", "drafts"},
                "02_distill": {"config_path", "run_dir", "run_name"},  # the run's settings come from the config
                "04_entropy_analysis": {"config_path", "run_dir"}}
    for name, params in expected.items():
        assert set(inspect_notebook(f"notebooks/{name}.ipynb")) == params, name


def test_prepare_data_on_cnndm_reports_the_length_filter(tmp_path, shared_data):
    """01 on CNN/DM also tokenizes the raw eval split to show the article-length filter (a datasets Column)."""
    from distillspec.study import stages
    from distillspec.study.preset import StudyConfig

    cfg = StudyConfig.from_yaml("configs/tiny.yaml", task="cnndm", train_split="validation", data_source=str(shared_data),
                           n_train=8, n_eval=4)
    summary = stages.prepare_data(cfg, tmp_path / "run")
    assert (summary["n_train"], summary["n_eval"]) == (8, 4)
    lengths = summary["article_tokens_before_filter"]
    assert len(lengths) > summary["n_eval"] and min(lengths) > 0
    assert 0 < summary["kept_by_filter"] == sum(n <= cfg.max_article_tokens for n in lengths) <= len(lengths)


def _published_records(tiny_run):
    config, run_dir, root = tiny_run
    name = yaml.safe_load((run_dir / "config.yaml").read_text())["name"]
    return root / "pub" / name / "records"


def test_publish_exports_every_finished_drafts_records(tiny_run):
    records = _published_records(tiny_run)
    for draft in ["baseline", *RUNS]:
        for suffix in ("tokens.parquet", "steps.parquet", "speed.json"):
            assert (records / f"{draft}_{suffix}").is_file(), (draft, suffix)
        assert json.loads((records / f"{draft}_speed.json").read_text())["fingerprint"]
    assert all((records / f"{r}_train_log.jsonl").is_file() for r in RUNS)


def test_imported_results_reproduce_the_table_without_training(tiny_run, tmp_path, capsys):
    """A later run imports every published draft: 04 alone runs and gives the same table and figures."""
    config, _, _ = tiny_run
    new = tmp_path / "imported"
    assert main(["run", "--config", str(config), "--run-dir", str(new), "--results-from",
                 str(_published_records(tiny_run))]) == 0
    assert "imported finished drafts from" in capsys.readouterr().out
    assert not list(new.glob("02_distill_*.ipynb")) and not (new / "03_specdec_eval.ipynb").exists()
    assert not (new / "drafts" / RUNS[0] / "student").exists()
    published = _published_records(tiny_run).parent  # results.md published with these records
    assert (new / "results.md").read_text() == (published / "results.md").read_text()


def test_a_study_run_in_parts(tiny_run, tmp_path, capsys):
    """Part 1 evaluates only the baseline (04 waits); part 2 names the one draft still missing (--drafts), imports
    the baseline and the drafts other parts published, trains and evaluates that draft, and completes the table."""
    import shutil

    config, _, _ = tiny_run
    first, second = tmp_path / "part1", tmp_path / "part2"
    assert main(["run", "--config", str(config), "--run-dir", str(first), "--drafts", "baseline",
                 "--publish", str(tmp_path / "pub")]) == 0
    out = capsys.readouterr().out
    assert "wait 04_entropy_analysis.ipynb: drafts " + ",".join(RUNS) in out and "results table: not yet" in out
    assert not (first / "results.md").exists() and not list(first.glob("02_distill_*.ipynb"))
    name = yaml.safe_load((first / "config.yaml").read_text())["name"]
    records = tmp_path / "pub" / name / "records"
    assert sorted(p.name for p in records.iterdir()) == ["baseline_manifest.json", "baseline_speed.json",
                                                          "baseline_steps.parquet", "baseline_timing.parquet",
                                                          "baseline_tokens.parquet"]
    interim = (first / "interim.md").read_text()  # where the study stands, published beside the records
    assert interim.startswith(f"**Interim**: 1 of {1 + len(RUNS)} drafts evaluated; still to come: {', '.join(RUNS)}.")
    assert "| baseline |" in interim and not any(f"| {r} |" in interim for r in RUNS)
    assert (tmp_path / "pub" / name / "interim.md").read_text() == interim
    for f in _published_records(tiny_run).iterdir():  # drafts other parts published, all but the first
        if not f.name.startswith(("baseline_", f"{RUNS[0]}_")):
            shutil.copy(f, records / f.name)
    baseline_tokens = pd.read_parquet(records / "baseline_tokens.parquet")
    assert main(["run", "--config", str(config), "--run-dir", str(second), "--drafts", RUNS[0],
                 "--results-from", str(records), "--publish", str(tmp_path / "pub")]) == 0
    assert [p.name for p in second.glob("02_distill_*.ipynb")] == [f"02_distill_{RUNS[0]}.ipynb"]
    assert pd.read_parquet(second / "records" / "baseline_tokens.parquet").equals(baseline_tokens)  # not redone
    assert pd.read_csv(second / "summary.csv")["draft"].tolist() == ["baseline", *RUNS]
    assert (tmp_path / "pub" / name / "results.md").is_file()  # 04's table replaces the interim one
    assert not (tmp_path / "pub" / name / "interim.md").exists() and not (second / "interim.md").exists()


def test_results_of_another_config_are_refused(tiny_run, tmp_path):
    config, _, _ = tiny_run
    other = yaml.safe_load(config.read_text())
    other["gamma"] = other["gamma"] + 1
    other_config = tmp_path / "other.yaml"
    other_config.write_text(yaml.safe_dump(other))
    with pytest.raises(DistillSpecError, match=r"made with another config or prompt set"):
        from distillspec.study.pipeline import run_pipeline

        run_pipeline(other_config, run_dir=tmp_path / "run", results_from=_published_records(tiny_run),
                     log=lambda *_: None)
    assert main(["run", "--config", str(config), "--run-dir", str(tmp_path / "x"), "--drafts", "baseline,nope"]) == 2


def test_relative_paths_mean_relative_to_where_they_were_typed(tmp_path, monkeypatch, shared_data):
    """--config, --run-dir and $DISTILLSPEC_DATA_DIR reach the notebooks (which run in notebooks/) as absolute
    paths resolved against the caller's directory."""
    from distillspec.study import pipeline

    seen = []

    def execute(step, run_dir, kernel, stop):  # stands in for papermill: what would the notebook receive?
        seen.append((step.parameters, os.environ["DISTILLSPEC_DATA_DIR"]))
        raise DistillSpecError("stop here")

    monkeypatch.setattr(pipeline, "_execute", execute)
    (tmp_path / "mine").mkdir()
    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg.pop("data_source")
    (tmp_path / "mine" / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "data").symlink_to(shared_data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILLSPEC_DATA_DIR", "data")
    assert main(["run", "--config", "mine/tiny.yaml", "--run-dir", "out/run"]) == 2
    params, data_dir = seen[0]
    assert params["config_path"] == str((tmp_path / "mine" / "tiny.yaml").resolve())
    assert params["run_dir"] == str((tmp_path / "out" / "run").resolve())
    assert data_dir == str((tmp_path / "data").resolve()) or data_dir == str(tmp_path / "data")
    assert os.environ["DISTILLSPEC_DATA_DIR"] == "data"  # as the caller set it, once the run is over


def test_03_times_every_draft_against_the_target_with_a_cut_head(tiny_run, tokenizer):
    """The tiny preset cuts the drafts' heads (draft_vocab) and times two settings (speed): 01 chose the kept ids
    from the teacher's text, 03 timed every draft in both settings, greedy SD wrote the target's own text."""
    config, run_dir, _ = tiny_run
    vocab = json.loads((run_dir / "data" / "draft_vocab.json").read_text())
    assert 0 < vocab["size"] == len(vocab["ids"]) <= 512 and tokenizer.eos_token_id in vocab["ids"]
    assert set(tokenizer.all_special_ids) <= set(vocab["ids"]) and 0 < vocab["coverage"] <= 1
    speed = pd.read_csv(run_dir / "speed_summary.csv")
    assert speed["draft"].tolist() == [d for d in ["baseline", *RUNS] for _ in range(2)]
    assert speed["setting"].tolist()[:2] == ["greedy, batch 1", "T=0.6, batch 2"]
    assert (speed.loc[speed["setting"] == "greedy, batch 1", "identical"] == 1.0).all()
    assert speed["gamma"].between(0, 4).all() and (speed["speedup_lo"] <= speed["speedup_hi"]).all()
    for col in ("speedup", "predicted_speedup", "c", "target_tokens_per_s", "sd_tokens_per_s"):
        assert speed[col].notna().all(), col
    drafted = speed["gamma"] > 0  # gamma 0: the never-slower check found drafting slower, the target decoded alone
    assert speed.loc[drafted, "alpha_pos"].notna().all() and speed.loc[~drafted, "alpha_pos"].isna().all()
    for draft in ["baseline", *RUNS]:
        row = json.loads((run_dir / "records" / f"{draft}_speed.json").read_text())
        assert [t["setting"] for t in row["timed"]] == ["greedy, batch 1", "T=0.6, batch 2"]
        assert all(t["pilot_alpha"] is not None and sorted(map(int, t["costs"]["target_s"])) == [1, 2, 3, 4, 5]
                   for t in row["timed"])  # gamma 'auto': a pilot, and costs up to speed_max_gamma + 1 tokens
        for t in row["timed"]:  # never slower: drafting only where the cost model and a timed trial both said it pays
            predicted = StepCosts.from_dict(t["costs"]).best_gamma(t["pilot_alpha"])
            if t["gamma"] > 0:
                assert t["gamma"] == predicted and t["pilot_speedup"] > 1.0
            else:
                assert predicted == 0 and t["pilot_speedup"] is None or t["pilot_speedup"] <= 1.0
        timing = pd.read_parquet(run_dir / "records" / f"{draft}_timing.parquet")
        assert timing.groupby("setting")["prompts"].sum().tolist() == [2, 2]
    # the speed table times each draft at its gamma; 03's eval-run throughput is not shown as a speedup beside it
    results = (run_dir / "results.md").read_text()
    assert "| speedup [95% CI] |" in results and "speedup vs target" not in results
    from distillspec.study.markdown import format_table

    for eval_speed, columns in ((True, 7), (False, 6)):  # without a speed table, the eval run's ratio is shown
        rows = format_table(pd.read_csv(run_dir / "summary.csv"), eval_speed=eval_speed).splitlines()
        assert {row.count("|") for row in rows} == {columns + 1} and ("speedup vs target" in rows[0]) == eval_speed


def test_retime_measures_evaluated_drafts_again_and_the_next_run_rebuilds_04(tiny_run, tmp_path, capsys):
    """`retime` times the named drafts against the target again (new costs and timing rows; their acceptance
    records and the other drafts untouched), removes 04's table, and the next `run` rebuilds it; a draft whose
    student is not in the run directory is refused with the fix."""
    from distillspec.study.rundir import RunPaths

    config, run_dir, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    records = copy / "records"
    before = {n: json.loads((records / f"{n}_speed.json").read_text()) for n in ["baseline", *RUNS[:2]]}
    tokens = (records / f"{RUNS[0]}_tokens.parquet").read_bytes()
    published = tmp_path / "figures" / "tiny"
    published.mkdir(parents=True)
    (published / "results.md").write_text("a table made from the old timings\n")
    assert main(["retime", "--config", str(config), "--run-dir", str(copy), "--drafts", f"baseline,{RUNS[0]}",
                 "--publish", str(tmp_path / "figures")]) == 0
    assert "rebuilds the analysis table" in capsys.readouterr().out and not (copy / "results.md").exists()
    assert not (published / "results.md").exists()  # stale beside the new records
    assert json.loads((published / "records" / f"{RUNS[0]}_speed.json").read_text()) == json.loads(
        (records / f"{RUNS[0]}_speed.json").read_text())
    for name in ["baseline", RUNS[0]]:
        after = json.loads((records / f"{name}_speed.json").read_text())
        assert after["timed"] != before[name]["timed"] and after["timed_on"] == machine()  # measured again, here
        assert [t["setting"] for t in after["timed"]] == [t["setting"] for t in before[name]["timed"]]
        assert {k: v for k, v in after.items() if k not in ("timed", "timed_on")} == {
            k: v for k, v in before[name].items() if k != "timed"}
    assert json.loads((records / f"{RUNS[1]}_speed.json").read_text()) == before[RUNS[1]]
    assert (records / f"{RUNS[0]}_tokens.parquet").read_bytes() == tokens
    assert main(["run", "--config", str(config), "--run-dir", str(copy)]) == 0
    assert (copy / "results.md").is_file() and "skip 03_specdec_eval.ipynb" in capsys.readouterr().out
    shutil.rmtree(RunPaths(copy).student(RUNS[1]))
    assert main(["retime", "--config", str(config), "--run-dir", str(copy), "--drafts", RUNS[1]]) == 2
    assert "no trained student" in capsys.readouterr().err
