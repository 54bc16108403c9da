"""The README's commands as a user types them: verbatim, from the repository root of a copy that sits next to
../shared, with relative paths everywhere (the pipeline runs its notebooks from notebooks/)."""

import os
import re
import subprocess

from conftest import REPO


def _bash_block_after(heading: str) -> str:
    """The first ```bash block after a README heading."""
    text = (REPO / "README.md").read_text()
    assert heading in text, f"README has no heading {heading!r}"
    block = re.search(r"```bash\n(.*?)```", text[text.index(heading):], re.S)
    assert block, f"no bash block after {heading!r}"
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


def test_rebuild_commands_reproduce_the_published_tables(tmp_path, shared_data):
    script = _bash_block_after("### Reproduce the published results")
    presets = re.findall(r"--config configs/(\w+)\.yaml", script)
    assert presets, script
    repo = tmp_path / "main"
    _copy_of_the_repository(repo)
    (tmp_path / "shared").symlink_to(shared_data.parent)  # ../shared/data, seen from the copy
    env = {k: v for k, v in os.environ.items() if k != "DISTILLSPEC_DATA_DIR"}
    env["PYTHONPATH"] = str(repo / "lib")  # the copy's package, ahead of the editable install of this one
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in presets:
        rebuilt = repo / "runs" / name / "results.md"
        assert rebuilt.is_file(), (name, done.stdout[-2000:])
        assert rebuilt.read_text() == (REPO / "figures" / name / "results.md").read_text(), name
        assert (repo / "runs" / name / "04_entropy_analysis.ipynb").is_file()


def test_published_tables_in_the_docs_are_the_results_files_verbatim():
    """Every results table (Table 1, the speed table) in README.md, docs/results.md and docs/speed.md is a block of
    some figures/<preset>/results.md."""
    published = [p.read_text() for p in sorted((REPO / "figures").glob("*/results.md"))]
    assert published
    for doc in ("README.md", "docs/results.md", "docs/speed.md"):
        tables = re.findall(r"(?m)^(\| draft \| (?:alpha_tok|setting|seeds) .*\n(?:\|.*\n)+)", (REPO / doc).read_text())
        assert tables, doc
        for table in tables:
            assert any(table in text for text in published), (doc, table[:200])
