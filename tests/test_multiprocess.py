"""Training on 2 processes (CPU, gloo) through the shipped accelerate configs: DDP matches one process with the
same global batch, saves once with full weights and resumes; FSDP2 with SKD rollouts completes and saves a full,
loadable draft. Each run is a real `accelerate launch` of tests/multiproc_worker.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from distillspec.trainlog import read_log

# several processes, each loading torch and TRL; one launch at a time (they share the rendezvous port)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiproc_worker.py"
# greedy-like teacher rollouts (lmbda 0, T -> 0): the same text whatever the batch split, so losses must agree
DETERMINISTIC = {"lmbda": 0.0, "temperature": 1e-4, "loss_temperature": 1.0, "top_p": 1.0, "batch_size": 4, "max_steps": 4,
                 "logging_steps": 1, "save_steps": 2, "validation_prompts": 3}


def _cpu_launch_config(name: str, tmp: Path) -> Path:
    """The shipped configs/accelerate/<name>.yaml with the device switched to 2 CPU processes."""
    data = yaml.safe_load((REPO / "configs" / "accelerate" / f"{name}.yaml").read_text())
    data.update(use_cpu=True, num_processes=2)
    data.pop("gpu_ids", None)
    path = tmp / f"{name}-cpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(out: Path, overrides: dict, shared_data, *, launch: str | None = None, extra=(), tmp=None, ok=True):
    worker = [str(WORKER), "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(out),
              "--overrides", json.dumps({"data_source": str(shared_data), **overrides}), *extra]
    if launch is None:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(_cpu_launch_config(launch, tmp)), "--main_process_port", "0", *worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _losses(out: Path):
    log = read_log(out / "train_log.jsonl").dropna(subset=["loss"]).set_index("step")
    return log[["loss", "grad_norm", "teacher_entropy", "expected_accept"]]


def _sharded(out: Path) -> bool:
    return json.loads((out / "report" / "engine.json").read_text())["sharded"]


def _assert_saved_equals_trained(out: Path):
    saved = AutoModelForCausalLM.from_pretrained(out / "student", dtype=torch.float32)
    trained = torch.load(out / "report" / "trained.pt")
    state = saved.state_dict()
    assert set(trained) <= set(state)
    for key, value in trained.items():
        assert state[key].shape == value.shape, key
        assert torch.equal(state[key], value.to(state[key].dtype)), key


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("single")
    _run(out, DETERMINISTIC, shared_data)
    return out


def test_ddp_two_processes_match_one_process_and_save_full_weights(single, tmp_path, shared_data):
    out = tmp_path / "ddp"
    _run(out, {**DETERMINISTIC, "micro_batch_size": 2}, shared_data, launch="ddp", tmp=tmp_path)
    assert json.loads((out / "report" / "result.json").read_text())["world_size"] == 2
    one, two = _losses(single), _losses(out)
    assert list(one.index) == list(two.index) == [1, 2, 3, 4]
    # the same global batch: the same loss and the same (reduced over processes) metrics, step by step
    assert torch.allclose(torch.tensor(one.values), torch.tensor(two.values), rtol=2e-4, atol=1e-6), (one, two)
    # validation: each process decodes its share of the prompts and the counts are added up, the same as one
    # process decoding them all (near-greedy sampling: the same tokens whatever the split)
    validated = [read_log(o / "train_log.jsonl").dropna(subset=["eval_alpha_pos"]).set_index("step")
                 for o in (single, out)]
    assert list(validated[0].index) == list(validated[1].index) == [2, 4]
    assert validated[0]["eval_alpha_pos"].tolist() == pytest.approx(validated[1]["eval_alpha_pos"].tolist())
    _assert_saved_equals_trained(out)
    assert not _sharded(out) and not _sharded(single)
    assert (out / "student" / "tokenizer.json").is_file() and not (out / ".student.partial").exists()


def test_ddp_resumes_after_an_interruption(tmp_path, shared_data):
    out = tmp_path / "resume"
    settings = {**DETERMINISTIC, "micro_batch_size": 2, "max_steps": 5}
    stopped = _run(out, settings, shared_data, launch="ddp", tmp=tmp_path, extra=["--stop-at", "3"], ok=False)
    assert stopped.returncode != 0 and (out / "checkpoint-2").is_dir() and not (out / "student").exists()
    _run(out, settings, shared_data, launch="ddp", tmp=tmp_path)
    assert json.loads((out / "report" / "result.json").read_text())["resumed_from"].endswith("checkpoint-2")
    assert sorted(set(read_log(out / "train_log.jsonl").dropna(subset=["loss"])["step"])) == [1, 2, 3, 4, 5]
    _assert_saved_equals_trained(out)


def test_fsdp2_with_skd_rollouts_completes_and_saves_a_full_draft(tmp_path, shared_data):
    out = tmp_path / "fsdp"
    settings = {"rollout": "skd", "lmbda": 1.0, "batch_size": 4, "max_steps": 2, "logging_steps": 1,
                "save_steps": 1, "train_max_new_tokens": 12, "validation_prompts": 2, "select_checkpoint": "validation"}
    _run(out, settings, shared_data, launch="fsdp2", tmp=tmp_path, extra=["--fsdp-on-cpu", "--same-prompt"])
    assert _sharded(out)  # really FSDP2: the trained parameters were DTensor shards
    _assert_saved_equals_trained(out)
    rollouts = [[json.loads(x) for x in (out / "report" / f"rollouts_{r}.jsonl").read_text().splitlines()]
                for r in (0, 1)]
    assert len(rollouts[0]) == len(rollouts[1]) == 2
    # same prompts on both processes: a seed per process gives different samples, and decoding ran for a different
    # number of steps on the two processes at least once (no lockstep was needed)
    assert rollouts[0][0]["sequences"] != rollouts[1][0]["sequences"]
    assert any(a["steps"] != b["steps"] for a, b in zip(*rollouts))
    log = read_log(out / "train_log.jsonl").dropna(subset=["loss"])
    assert log["skd_kept"].between(0, 1).all() and len(log) == 2
    log = read_log(out / "train_log.jsonl")
    validated = log.dropna(subset=["eval_alpha_pos"])  # decoded on gathered weights, at every checkpoint
    assert validated["step"].tolist() == [1, 2] and validated["eval_alpha_pos"].between(0, 1).all()
    chosen = log.dropna(subset=["selected_step"]).iloc[-1]  # the best checkpoint loaded back under FSDP2
    assert chosen["selected_alpha_pos"] == pytest.approx(validated["eval_alpha_pos"].max())
