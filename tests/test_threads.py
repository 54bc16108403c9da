"""OpenMP's waiting policy takes effect only when set before torch loads: every entry point sets its role's policy
first (the command line per command, the pipeline per notebook kernel), and a user's own setting is kept."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from distillspec.threads import WAIT_POLICY, thread_env

# Runs `python -m distillspec ARGS` up to torch's first import, prints OMP_WAIT_POLICY as it was then and stops there
# (what the command would do next does not matter here)
PROBE = """
import importlib.abc, json, os, runpy, sys
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            print("SEEN " + json.dumps({"torch": os.environ.get("OMP_WAIT_POLICY")}), flush=True)
            os._exit(0)
sys.meta_path.insert(0, Probe())
sys.argv = ["distillspec", *sys.argv[1:]]
try:
    runpy.run_module("distillspec", run_name="__main__")
except SystemExit:
    pass
print("SEEN {}")  # the command ended without importing torch
"""


def _seen(args, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env={**environ, **env}, cwd=REPO, text=True,
                         capture_output=True, timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("SEEN ")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(line[-1][5:])


@pytest.mark.parametrize("args, role", [
    (["eval", "--config", "configs/tiny.yaml", "--n", "1", "--max-new-tokens", "2", "--gamma", "1", "--out", "{tmp}"],
     "work"),
    (["retime", "--config", "configs/tiny.yaml", "--drafts", "fkl", "--run-dir", "{tmp}"], "timing"),
])
def test_each_command_sets_its_policy_before_torch_loads(args, role, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path / "x")) for a in args]
    assert _seen(args) == {"torch": WAIT_POLICY[role]}
    assert _seen(args, OMP_WAIT_POLICY="ACTIVE" if role == "work" else "PASSIVE") == {
        "torch": "ACTIVE" if role == "work" else "PASSIVE"}  # the user's own setting wins


def test_thread_env_keeps_a_users_setting():
    assert thread_env("timing", {}) == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert thread_env("work", {"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    with pytest.raises(ValueError, match="role='fast'"):
        thread_env("fast", {})


@pytest.mark.slow
def test_each_notebook_kernel_starts_with_its_stages_policy(tmp_path, monkeypatch):
    """03's kernel times decoding (active waiting), the others work (passive); the setting is in the kernel's
    environment from its start, before its first cell imports anything."""
    import nbformat

    from distillspec.study.pipeline import Step, _execute, _Stop

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setenv("DISTILLSPEC_NOTEBOOKS", str(folder))
    for name in ("01_data", "03_specdec_eval"):
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                               "display_name": "Python 3"}})
        nb.cells = [nbformat.v4.new_code_cell("out = None", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell("import os, sys\nopen(out, 'w').write(str(os.environ.get("
                                              "'OMP_WAIT_POLICY')) + ' ' + str('torch' in sys.modules))")]
        nbformat.write(nb, folder / f"{name}.ipynb")
    run = tmp_path / "run"
    run.mkdir()
    for name, threads in (("01_data", "work"), ("03_specdec_eval", "timing")):
        out = tmp_path / f"{name}.txt"
        _execute(Step(f"{name}.ipynb", f"{name}.ipynb", [out], {"out": str(out)}, threads=threads), run, "python3",
                 _Stop())
        assert out.read_text() == f"{WAIT_POLICY[threads]} False"
