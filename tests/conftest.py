"""Shared fixtures: offline switches, the real data directory, the real tokenizer and teacher, tiny models."""

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from distillspec.threads import set_threads  # noqa: E402

set_threads("work")  # before any test imports torch: tests beside other work wait passively (threads.py)


@pytest.fixture(scope="session", autouse=True)
def _clear_earlier_scratch(tmp_path_factory, pytestconfig):
    """Remove earlier test runs' numbered scratch folders (pytest-N) now: pytest does it only when a run ends,
    which on a shared runner with a nearly full disk comes after this run's checkpoints have failed to save.
    Folders still locked by a running pytest are left alone (pytest's own rule)."""
    from _pytest.pathlib import LOCK_TIMEOUT, cleanup_numbered_dir

    base = tmp_path_factory.getbasetemp()
    if base.name.startswith("popen-gw"):  # a pytest-xdist worker: its folder sits in the run's pytest-N
        base = base.parent
    if base.name.startswith("pytest-"):  # not a --basetemp the user chose
        keep = int(pytestconfig.getini("tmp_path_retention_count"))  # pyproject.toml's, so the two cannot differ
        cleanup_numbered_dir(base.parent, "pytest-", keep=keep,
                             consider_lock_dead_if_created_before=base.stat().st_mtime - LOCK_TIMEOUT)


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DISTILLSPEC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert (SHARED_DATA / "gsm8k" / "test.jsonl").is_file(), (
        f"Real test data not found at {SHARED_DATA}: the tests read ../shared/data (or $DISTILLSPEC_SHARED_DATA)."
    )
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    from distillspec.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def teacher():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, loaded once per test run."""
    from distillspec.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_pair():
    """A tiny Qwen3-style target and a noisy copy as draft: partial acceptance (alpha around 0.3-0.5)."""
    from distillspec.tiny import perturbed_copy, tiny_model

    target = tiny_model("qwen3", seed=1, init_std=0.5, hidden_size=32)
    return target, perturbed_copy(target, 0.03, seed=3)


@pytest.fixture(scope="session")
def small_vocab_pair():
    """A tiny target and draft over 8 token ids: every sequence of a few tokens can be enumerated (exact tests)."""
    from distillspec.tiny import tiny_model

    target = tiny_model("llama", vocab_size=8, seed=11, init_std=1.0, hidden_size=16)
    draft = tiny_model("llama", vocab_size=8, seed=12, init_std=1.0, hidden_size=16, num_layers=1)
    return target, draft


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shared_data):
    """The pipeline (`python -m distillspec run`) on a shortened tiny preset, once per test run:
    (config, run directory, scratch root with the published copy in pub/)."""
    root = tmp_path_factory.mktemp("pipeline")
    cfg = yaml.safe_load(open(REPO / "configs" / "tiny.yaml"))
    cfg.update(data_source=str(shared_data), max_steps=4, save_steps=2, logging_steps=1, n_eval=4, n_train=16,
               max_new_tokens=12, train_max_new_tokens=8, min_bin_count=2,
               divergences=["fkl", "rkl"])  # and the preset's SKD run and feature head
    config = root / "tiny_fast.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = root / "run"
    from distillspec.__main__ import main

    assert main(["run", "--config", str(config), "--run-dir", str(run_dir), "--publish", str(root / "pub")]) == 0
    return config, run_dir, root


def signal_after_logged_steps(proc, log: Path, steps: int, timeout: float, signum) -> None:
    """Send signum to the training process proc once its log has `steps` lines (failing with its stderr if it ends
    or runs out of time first)."""
    import time

    deadline = time.monotonic() + timeout
    while not (log.is_file() and len(log.read_text().splitlines()) >= steps):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signum)


SLOW_FIXTURES = {"tiny_run", "seeded_run", "lab", "browser", "teacher"}  # a whole pipeline, a browser, the real model
# Under pytest-xdist (make test: -n 2 --dist loadgroup) the tests that share one of these fixtures run on one
# worker, so the fixture is made once (a module-scoped one too: xdist spreads a module's tests over the workers
# otherwise, and each makes it): the first named here that a test uses gives its group. The trained heads of
# test_eagle.py (module-scoped) share one group: tests of either kind of head, or both, train each head once.
SHARED_FIXTURES = {"tiny_run": "tiny_run", "seeded_run": "seeded_run", "teacher": "teacher",
                   "trained_head": "heads", "fused_head": "heads", "warm_run": "warm_run"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Tests that need a whole pipeline run, the browser or the real teacher are `slow` (make test-fast skips them);
    others say so with @pytest.mark.slow. Tests sharing an expensive fixture share an xdist group; slow tests run
    first."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & used:
            item.add_marker(pytest.mark.slow)
        shared = [group for f, group in SHARED_FIXTURES.items() if f in used]
        if shared and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(shared[0]))
    # slow tests first (a stable sort: each module's and group's order kept), so that the quick ones fill the end
    # and neither worker waits alone for a long test handed out last
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
