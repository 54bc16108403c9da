"""The README's commands as a user types them: verbatim, from the repository root of a copy that sits next to
../shared, with relative paths everywhere (the pipeline runs its notebooks from notebooks/)."""

import os
import re
import subprocess

import pytest

from conftest import REPO


def _block_after(heading: str, language: str = "bash") -> str:
    """The first fenced block in `language` after a README heading."""
    text = (REPO / "README.md").read_text()
    assert heading in text, f"README has no heading {heading!r}"
    block = re.search(rf"```{language}\n(.*?)```", text[text.index(heading):], re.S)
    assert block, f"no {language} block after {heading!r}"
    return block.group(1)


def _copy_of_the_repository(dest):
    """The working tree as git sees it (tracked and untracked, ignored files left out), with the project's .venv."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    (dest / ".venv").symlink_to(REPO / ".venv")


def _rebuild_block() -> tuple[list[str], list[str], list[str]]:
    """The block's set-up lines, its commands and the preset each command rebuilds."""
    script = _block_after("### Reproduce the published results")
    lines = [line for line in script.splitlines() if line.strip()]
    setup = [line for line in lines if not line.startswith("python ")]
    commands = [line for line in lines if line.startswith("python ")]
    assert setup == ["source .venv/bin/activate", "export DISTILLSPEC_DATA_DIR=../shared/data"], setup
    command = r"--config configs/(\w+)\.yaml --results-from figures/\1/records --publish figures$"
    presets = [re.search(command, c).group(1) for c in commands]
    assert presets and len(setup) + len(commands) == len(lines), script
    studies = [p.parent.name for p in (REPO / "figures").glob("*/results.md") if (p.parent / "config.yaml").is_file()]
    assert sorted(presets) == sorted(studies), presets  # every published study (its folder holds its preset)
    return setup, commands, presets


VERBATIM = (0,)  # the commands run as typed (the first); every other preset is rebuilt in-process


@pytest.mark.slow
def test_rebuild_commands_reproduce_the_published_tables(tmp_path, shared_data):
    """The block's set-up lines, then its first command verbatim in a copy of the repository (the others run the
    same command line on another preset; their tables are rebuilt in-process below)."""
    setup, commands, presets = _rebuild_block()
    chosen = {presets[i]: commands[i] for i in VERBATIM}
    repo = tmp_path / "main"
    _copy_of_the_repository(repo)
    (tmp_path / "shared").symlink_to(shared_data.parent)  # ../shared/data, seen from the copy
    env = {k: v for k, v in os.environ.items() if k != "DISTILLSPEC_DATA_DIR"}
    env["PYTHONPATH"] = str(repo / "lib")  # the copy's package, ahead of the editable install of this one

    def run(command):
        return subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join([*setup, command])], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=900)

    done = {name: run(command) for name, command in chosen.items()}
    for name in chosen:
        assert done[name].returncode == 0, (name, done[name].stderr[-3000:])
        rebuilt = repo / "runs" / name / "results.md"
        assert rebuilt.is_file(), (name, done[name].stdout[-2000:])
        assert rebuilt.read_text() == (REPO / "figures" / name / "results.md").read_text(), name
        assert (repo / "runs" / name / "04_entropy_analysis.ipynb").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for i, p in enumerate(_rebuild_block()[2])
                                    if i not in {j % len(_rebuild_block()[2]) for j in VERBATIM}])
def test_every_other_published_table_rebuilds_from_its_records(preset, tmp_path, shared_data, monkeypatch):
    """What the block's command does for this preset, in this process without the notebooks' kernels: the prompt
    sets, the records imported from figures/<preset>/records (manifests checked), then the analysis stage; its
    results.md must be the published one byte for byte."""
    from distillspec.study import stages
    from distillspec.study.handoff import import_records
    from distillspec.study.preset import StudyConfig
    from distillspec.study.handoff import bind_config
    from distillspec.study.rundir import RunPaths, draft_names, timed_names

    monkeypatch.setenv("DISTILLSPEC_DATA_DIR", str(shared_data))
    cfg = StudyConfig.from_yaml(REPO / "configs" / f"{preset}.yaml")
    run_dir = tmp_path / preset
    run_dir.mkdir()
    bind_config(cfg, run_dir)
    stages.prepare_data(cfg, run_dir)
    imported = import_records(cfg, run_dir, REPO / "figures" / preset / "records", timed_names(cfg))  # + the reference
    assert set(draft_names(cfg)) <= set(imported), imported
    stages.analyze(cfg, run_dir)
    assert RunPaths(run_dir).results.read_text() == (REPO / "figures" / preset / "results.md").read_text(), preset


def test_published_tables_in_the_docs_are_the_results_files_verbatim():
    """Every full results table (Table 1, the speed table, the entropy-region tables) in docs/results.md and
    docs/speed.md is a block of some figures/<preset>/results.md, or of the interim.md of a study still in parts
    (the README's compact tables are checked above)."""
    published = [p.read_text() for p in sorted((REPO / "figures").glob("*/*.md")) if p.name in ("results.md",
                                                                                                   "interim.md")]
    assert published
    for doc in ("docs/results.md", "docs/speed.md"):
        tables = re.findall(r"(?m)^(\| (?:draft \| (?:alpha_tok|setting|seeds) |\w+ minus |minus \w+ ).*\n(?:\|.*\n)+)",
                            (REPO / doc).read_text())
        assert tables, doc
        for table in tables:
            assert any(table in text for text in published), (doc, table[:200])


def test_readme_is_a_five_minute_read_and_names_every_command():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    from distillspec.__main__ import main

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["--help"])
    commands = re.search(r"\{([a-z,-]+)\}", out.getvalue()).group(1).split(",")
    assert len(commands) >= 5
    for command in commands:
        assert re.search(rf"\b{command}\b", text.split("## How it is built")[1]), command


def _headline(published: str) -> dict[str, list[str]]:
    """Recipe -> cells of results.md's headline table: the mean over seeds, or Table 1 of a single-seed study."""
    table = re.search(r"(?m)^\| draft \| (?:seeds|alpha_tok) .*\n\|[-|]+\n((?:\|.*\n)+)", published).group(1)
    return {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in table.splitlines())}


def test_compact_tables_in_the_readme_are_the_results_files_numbers():
    """Each row of the README's compact tables (alpha_tok [CI], greedy batch-1 speedup [CI]) is that recipe's row of
    the published results.md: its headline table (and for a single-seed study its speed table), cell for cell."""
    text = (REPO / "README.md").read_text()
    compact = re.findall(r"\(`configs/(\w+)\.yaml`.*\n\n\| recipe \|.*\n\|[-|]+\n((?:\|.*\n)+)", text)
    assert [p for p, _ in compact] == ["offline_gsm8k_seeds", "offline_cnndm_seeds", "offline_gsm8k_warm",
                                        "offline_gsm8k_eagle"], compact
    for preset, rows in compact:
        published = (REPO / "figures" / preset / "results.md").read_text()
        full = _headline(published)
        shown = [[x.strip() for x in line.strip("|").split("|")] for line in rows.splitlines()]
        assert [r[0] for r in shown] == list(full), preset
        seeded = "| draft | seeds " in published
        speed = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")]
                                   for line in re.findall(r"(?m)^\| \w+ \| greedy, batch 1 \|.*$", published))}
        for recipe, alpha_tok, speedup in shown:
            if seeded:
                assert alpha_tok == full[recipe][2] and full[recipe][6].startswith(speedup + " ("), (preset, recipe)
            else:  # Table 1's alpha_tok, the speed table's greedy batch-1 speedup
                assert alpha_tok == full[recipe][1] and speedup == speed[recipe][7], (preset, recipe)


def _speed_rows(published: str) -> dict[tuple[str, str], list[str]]:
    """(draft, setting) -> cells of a results file's timing table."""
    lines = re.findall(r"(?m)^\| \w+ \| (?:greedy|T=[\d.]+), batch \d+ \|.*$", published)
    cells = [[x.strip() for x in line.strip("|").split("|")] for line in lines]
    return {(c[0], c[1]): c for c in cells}


def test_the_readmes_draft_for_each_task_is_the_fastest_published_one():
    """The README's table of which draft to use: per task and setting (greedy, the task's temperature; batch 1) the
    draft with the highest speedup on the kinds preset's published timing table (transformers' own lookup aside),
    its speedup and transformers' lookup's, cell for cell."""
    text = (REPO / "README.md").read_text()
    table = re.search(r"(?m)^\| task \| greedy: draft to use \|.*\n\|[-|]+\n((?:\|.*\n)+)", text).group(1)
    rows = [[x.strip() for x in line.strip("|").split("|")] for line in table.splitlines()]
    assert [re.search(r"`(\w+)`", r[0]).group(1) for r in rows] == ["offline_gsm8k_kinds", "offline_cnndm_kinds"]
    for task, greedy_draft, greedy, sampled_draft, sampled, reference in rows:
        preset = re.search(r"`(\w+)`", task).group(1)
        folder = REPO / "figures" / preset
        published = (folder / ("results.md" if (folder / "results.md").is_file() else "interim.md")).read_text()
        cells = _speed_rows(published)
        temperature = next(s for (_, s) in cells if s.startswith("T=") and s.endswith("batch 1"))
        theirs = []
        for setting, draft, shown in (("greedy, batch 1", greedy_draft, greedy), (temperature, sampled_draft, sampled)):
            speedups = {d: float(c[7].split("x")[0]) for (d, s), c in cells.items()
                        if s == setting and d != "transformers_lookup"}
            assert draft == max(speedups, key=speedups.get) and shown == cells[(draft, setting)][7], (preset, setting)
            theirs.append(cells[("transformers_lookup", setting)][7].split(" ")[0])
        assert reference == " / ".join(theirs) and temperature.startswith(task.split(", ")[-1].rstrip(")")), preset


def test_the_python_example_runs(tmp_path, shared_data, monkeypatch):
    """The README's Python example, on the tiny pair (a random 2-layer teacher) and a few steps, so it runs in
    seconds: the same calls in the same order."""
    code = _block_after("## In Python", "python")
    small = code.replace('teacher="smollm2-135m-instruct", student_keep_layers=4',
                         'teacher="tiny-qwen3", student_keep_layers=1, n_train=8, batch_size=2, max_new_tokens=8')
    small = small.replace("max_steps=20", "max_steps=2").replace("max_new_tokens=64", "max_new_tokens=8")
    assert small.count("tiny-qwen3") == 1 and "max_steps=2" in small, "the example changed: update this test"
    monkeypatch.setenv("DISTILLSPEC_DATA_DIR", str(shared_data))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(small, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "my_rkl" / "student" / "config.json").is_file()
    assert 0 <= namespace["res"].metrics.alpha_tok <= 1
