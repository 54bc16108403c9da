"""The package's shape: no import cycle among its modules (imports inside functions count too), and the library
never imports the study machinery built on it."""

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "lib" / "distillspec"


def _module_name(path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """distillspec module -> the distillspec modules it imports anywhere in its body."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                for alias in node.names:  # `from . import x` may name a module
                    edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in modules and e != name and e != "distillspec"}
    return graph


def _cycles(graph):
    seen, stack, found = set(), [], []

    def visit(node):
        if node in stack:
            found.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    return found


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_the_library_does_not_import_the_study():
    graph = import_graph()
    core = [m for m in graph if not m.startswith("distillspec.study") and m != "distillspec.__main__"]
    assert core and all(not any(e.startswith("distillspec.study") for e in graph[m]) for m in core), \
        {m: sorted(graph[m]) for m in core if any(e.startswith("distillspec.study") for e in graph[m])}
    # within the study: the preset imports no other study module, the run directory only the preset
    assert not any(e.startswith("distillspec.study.") for e in graph["distillspec.study.preset"])
    assert not any(e.startswith("distillspec.study.") and e != "distillspec.study.preset"
                   for e in graph["distillspec.study.rundir"])


_STATE = """
import logging, sys, warnings
def state():
    import datasets.utils.logging as dl
    from transformers.utils import logging as hf
    return (list(map(str, warnings.filters)), {n: logging.getLogger(n).level for n in ("bitsandbytes", "transformers",
            "transformers.trainer_utils", "datasets")}, [len(logging.getLogger(n).filters) for n in
            ("transformers.trainer_utils",)], dl.is_progress_bar_enabled(), hf.is_progress_bar_enabled())
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_public_api_imports_without_side_effects():
    """`from distillspec import ...` gives the public API and leaves warning filters, logging levels and progress
    bars as they were (the entry points quiet third-party output, not the import); the package alone loads no
    torch."""
    out = _run(_STATE + """
import distillspec
assert "torch" not in sys.modules, "import distillspec loaded torch"
import accelerate, datasets, matplotlib.pyplot, pandas, peft, scipy.stats, torch, transformers, trl  # their own filters
import nbformat, papermill, tqdm.auto
before = state()
from distillspec import speculative_generate, SpecDecResult, distill, Config, load_model, load_pair
import distillspec.study.stages, distillspec.study.pipeline, distillspec.study.workbook
after = state()
assert before == after, (before, after)
print("ok")
""")
    assert out.strip().endswith("ok")


def test_public_names_are_not_shadowed_by_submodules():
    """`from distillspec import distill` must give the function even after some code imported a submodule (a
    submodule named like a public name would replace it on the package)."""
    out = _run("""
import distillspec.distillation, distillspec.specdec, distillspec.config, distillspec.pair
from distillspec import distill, speculative_generate, Config, load_pair
print(all(callable(x) and not hasattr(x, "__path__") and type(x).__name__ != "module"
          for x in (distill, speculative_generate, Config, load_pair)))
""")
    assert out.strip() == "True", out


def test_run_directory_and_results_need_no_trl():
    """The run directory, the training log and the statistics load without TRL (only training needs it)."""
    out = _run("""
import sys
import distillspec.study.rundir, distillspec.study.seeds, distillspec.trainlog
print(sorted(m for m in ("trl", "peft") if m in sys.modules))
""")
    assert out.strip() == "[]", out
