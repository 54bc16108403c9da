"""The reference pairs' path without a GPU: mixed precision, the one (teacher, draft) decision, per-run
overrides, the global batch, device placement, refused engines and the hand-off to serving engines."""

import json
import shutil
import warnings

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from distillspec import DistillSpecError
from distillspec.study.preset import StudyConfig
from distillspec.distillation import distill
from distillspec.drafts import load_pair
from distillspec.losses import chunked_distill_loss, naive_distill_loss
from distillspec.models import count_parameters, draft_from_teacher, load_model, save_pretrained_atomic
from distillspec import runtime
from distillspec.study.pipeline import plan
from distillspec.runtime import batch_layout, check_engine, compute_dtype, process_device, resolve_precision
from distillspec.study import evaluation
from distillspec.study.rundir import RunPaths
from distillspec.tiny import tiny_model


@pytest.fixture(scope="module")
def tiny_cfg(shared_data):
    return StudyConfig.from_yaml("configs/tiny.yaml", data_source=str(shared_data))


def test_bf16_keeps_fp32_master_weights_and_small_steps_apply(tiny_cfg, tmp_path):
    """precision: bf16 is mixed precision: trainable weights stay fp32 (a 1e-5 Adam step on ~0.25-sized weights
    is below bf16's resolution and would round away), the forward runs under bf16 autocast."""
    cfg = tiny_cfg.run_config(precision="bf16", learning_rate=1e-5, max_steps=2, logging_steps=1, save_steps=10,
                              warmup_steps=0)
    teacher, student, tok = load_pair(cfg, training=True)
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    seen = []
    student.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    distill(cfg, tmp_path, pair=(teacher, student, tok))
    assert torch.bfloat16 in seen  # autocast was on in the training forward
    after = student.state_dict()
    assert {v.dtype for v in after.values()} == {torch.float32}
    changed = sum(int((after[k] != before[k]).sum()) for k in before) / sum(v.numel() for v in before.values())
    assert changed > 0.9, changed
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert saved.dtype == torch.float32


def test_loss_logits_are_fp32_under_bf16_autocast():
    """The fused loss projects in fp32 even inside a bf16 autocast region and with bf16 heads (as TRL)."""
    gen = torch.Generator().manual_seed(0)
    h_s, h_t = torch.randn(2, 6, 32, generator=gen), torch.randn(2, 6, 32, generator=gen)
    w_s, w_t = torch.randn(5000, 32, generator=gen) * 0.3, torch.randn(5000, 32, generator=gen) * 0.3
    mask = torch.ones(2, 6)
    ref = naive_distill_loss(h_s @ w_s.T, h_t @ w_t.T, mask, divergence="jsd").item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_distill_loss(h_s, h_t, w_s, w_t, mask, divergence="jsd", chunk_size=4).loss.item()
    assert got == pytest.approx(ref, rel=1e-5)
    w_s16 = w_s.bfloat16().requires_grad_(True)
    stats = chunked_distill_loss(h_s.bfloat16(), h_t.bfloat16(), w_s16, w_t.bfloat16(), mask, divergence="jsd")
    stats.loss.backward()
    assert w_s16.grad.dtype == torch.bfloat16  # gradients come back in the parameters' own dtype
    ref16 = naive_distill_loss(h_s.bfloat16().float() @ w_s.bfloat16().float().T,
                               h_t.bfloat16().float() @ w_t.bfloat16().float().T, mask, divergence="jsd").item()
    assert stats.loss.item() == pytest.approx(ref16, rel=1e-5)


def test_precision_is_a_config_key(tiny_cfg, tmp_path):
    from distillspec.distillation import training_args

    assert resolve_precision("auto") == ("bf16" if torch.cuda.is_available() else "fp32")
    assert training_args(tiny_cfg.run_config(precision="bf16"), tmp_path).bf16
    assert not training_args(tiny_cfg.run_config(precision="fp32"), tmp_path).bf16
    assert compute_dtype("bf16") == torch.bfloat16 and compute_dtype("fp32") == torch.float32
    with pytest.raises(DistillSpecError, match="precision='fp8' must be one of"):
        tiny_cfg.replace(precision="fp8")


def test_a_separate_student_is_the_baseline_everywhere(tiny_cfg, tmp_path, tokenizer):
    """With `student` set, the baseline draft of 03 (and of training, eval and the benchmarks: load_pair) is that
    model, not layers of the teacher."""
    from distillspec.study.stages import evaluate_drafts, prepare_data

    student_dir = tmp_path / "student_model"
    separate = tiny_model("llama", seed=5, init_std=0.25, hidden_size=48, num_layers=3)
    save_pretrained_atomic(separate, tokenizer, student_dir)
    cfg = tiny_cfg.replace(student=str(student_dir), n_eval=2, max_new_tokens=6, divergences=[], extra_runs=[])
    teacher, draft, _ = load_pair(cfg, training=True)
    derived = draft_from_teacher(teacher, cfg.student_keep_layers)
    assert count_parameters(draft) == count_parameters(separate) != count_parameters(derived)
    assert torch.equal(draft.model.layers[2].mlp.up_proj.weight, separate.model.layers[2].mlp.up_proj.weight)
    run = tmp_path / "run"
    prepare_data(cfg, run)
    speed = evaluate_drafts(cfg, run, ["baseline"])
    assert speed.loc[0, "draft_params"] == count_parameters(separate)
    shutil.rmtree(student_dir)  # a finished draft is not loaded again: 03 then needs only the target
    assert evaluate_drafts(cfg, run, ["baseline"]).loc[0, "draft_params"] == count_parameters(separate)


def test_extra_runs_forward_every_override_to_training(tiny_cfg, tmp_path):
    from distillspec.study.stages import prepare_data, train_draft

    runs = [{"name": "mix", "divergence": "fkl", "lmbda": 0.5, "loss_temperature": 1.0, "adaptive_beta": {"h_low": 1.0},
             "max_steps": 2, "logging_steps": 1, "save_steps": 10}]
    cfg = tiny_cfg.replace(extra_runs=runs, divergences=["rkl"], n_train=8, n_eval=2)
    steps = plan(cfg, tmp_path / "c.yaml", tmp_path / "run")
    assert [s.parameters["run_name"] for s in steps if s.notebook == "02_distill.ipynb"] == ["rkl", "mix"]
    prepare_data(cfg, tmp_path / "run")
    result = train_draft(cfg, tmp_path / "run", "mix")
    used = yaml.safe_load((result.output_dir / "config.yaml").read_text())
    assert (used["divergence"], used["lmbda"], used["loss_temperature"], used["max_steps"]) == ("fkl", 0.5, 1.0, 2)
    assert used["adaptive_beta"] == {"h_low": 1.0}


def test_batch_size_is_the_global_batch():
    assert batch_layout(32, 8, 1) == batch_layout(32, 8, 1)
    one, four, eight = batch_layout(32, 8, 1), batch_layout(32, 8, 4), batch_layout(32, 8, 8)
    assert (one.per_device, one.accumulation) == (8, 4)
    assert (four.per_device, four.accumulation) == (8, 1)
    assert (eight.per_device, eight.accumulation) == (4, 1)
    for layout in (one, four, eight):
        assert layout.per_device * layout.accumulation * layout.processes == 32
    assert batch_layout(8, None, 2).per_device == 4
    with pytest.raises(DistillSpecError, match="does not divide over 3 processes"):
        batch_layout(32, 8, 3)
    with pytest.raises(DistillSpecError, match="micro_batch_size=3 does not divide"):
        batch_layout(32, 3, 1)


def test_each_process_loads_on_its_own_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert process_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert process_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device() == torch.device("cpu")


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for has_bf16, precision, warns in ((False, "bf16", True), (True, "bf16", False), (None, "bf16", False),
                                       (False, "fp32", False), (False, "auto", False)):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runtime.warn_if_emulated_bf16(precision, "eval_precision")
        assert [str(w.message).startswith("eval_precision is bf16") for w in caught] == ([True] if warns else [])
    assert runtime.machine().startswith("cpu: ")


def test_target_speed_is_reused_only_on_the_machine_that_measured_it(monkeypatch, tmp_path):
    """A run directory that moved (a persistent disk on a new machine) must not divide this machine's SD speed by
    another machine's target speed."""
    paths = RunPaths(tmp_path)
    paths.target_speed.parent.mkdir(parents=True)
    measured = []
    monkeypatch.setattr(evaluation, "target_tokens_per_s", lambda *a, **k: measured.append(1) or 50.0 + len(measured))
    monkeypatch.setattr(evaluation, "machine", lambda: "cpu: here")
    cfg = StudyConfig()
    for saved, expect, calls in (({"tokens_per_s": 9.0, "machine": "cpu: here"}, 9.0, 0),
                                 ({"tokens_per_s": 9.0, "machine": "cpu: elsewhere"}, 51.0, 1)):
        paths.target_speed.write_text(json.dumps(saved))
        assert evaluation._target_speed(cfg, paths, None, None, [[1, 2]]) == expect and len(measured) == calls
        assert json.loads(paths.target_speed.read_text())["machine"] == "cpu: here"


def test_8bit_teacher_and_zero3_are_refused_up_front(tiny_cfg, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(DistillSpecError, match="teacher_8bit: true needs a CUDA GPU"):
            load_pair(tiny_cfg.replace(teacher_8bit=True), training=True)
        with pytest.raises(DistillSpecError, match="load_in_8bit=True needs a CUDA|teacher_8bit: true needs a CUDA"):
            load_model("tiny-qwen3", load_in_8bit=True)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(DistillSpecError, match="DeepSpeed ZeRO-3 is not supported.*FSDP2"):
        check_engine()
    with pytest.raises(DistillSpecError, match="DeepSpeed ZeRO-3"):
        load_pair(tiny_cfg, training=True)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    check_engine()


@pytest.mark.real_model
def test_exported_draft_serves_as_assistant_model_losslessly(teacher, tmp_path):
    """export --to hf: a plain checkpoint (no distillspec keys) that transformers' assisted generation takes,
    and greedy output with it is token-identical to the target's own."""
    from distillspec.__main__ import main

    target, tok = teacher
    draft = draft_from_teacher(target, 10)
    trained = tmp_path / "run" / "drafts" / "fkl" / "student"
    save_pretrained_atomic(draft, tok, trained)
    (trained.parent / "config.yaml").write_text(yaml.safe_dump({"teacher": "smollm2-135m-instruct"}))
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"name": "x", "gamma": 3}))  # the study's
    assert "distillspec_kept_layers" in json.loads((trained / "config.json").read_text())
    out = tmp_path / "export"
    assert main(["export", "--draft", str(trained), "--to", "vllm", "--out", str(out), "--gamma", "4"]) == 0
    assert "distillspec" not in (out / "config.json").read_text()
    usage = (out / "USAGE.md").read_text()
    assert '"method": "draft_model"' in usage and f'"model": "{out}"' in usage and "assistant_model=draft" in usage
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert exported.config.num_hidden_layers == 10
    prompt = tok.apply_chat_template([{"role": "user", "content": "Natalia sold 48 clips in April and half as many "
                                       "in May. How many clips did she sell?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    kw = dict(max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    plain = target.generate(**prompt, **kw)
    assisted = target.generate(**prompt, assistant_model=exported, num_assistant_tokens=4,
                               num_assistant_tokens_schedule="constant", **kw)
    assert assisted.tolist() == plain.tolist()
    with pytest.raises(SystemExit):
        main(["export", "--draft", str(trained), "--to", "onnx", "--out", str(out)])
    assert main(["export", "--draft", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # not a draft
    from distillspec.export import export_draft

    with pytest.warns(UserWarning, match="Could not load the tokenizer of 'nobody/no-such-model'"):
        export_draft(trained, tmp_path / "offline", target="nobody/no-such-model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a loadable target is checked, silently
        export_draft(trained, tmp_path / "checked")
    assert '"num_speculative_tokens": 3' in (tmp_path / "checked" / "USAGE.md").read_text()  # the study's gamma


def test_eval_refuses_a_config_together_with_pair_flags():
    from distillspec.study.preset import pair_config

    with pytest.raises(DistillSpecError, match="sets the teacher and the baseline draft; drop --teacher, --keep-layers"):
        pair_config("configs/tiny.yaml", teacher="x", keep_layers=3)
    assert pair_config(None, keep_layers=4).student_keep_layers == 4


def test_train_command_writes_data_then_a_draft_the_pipeline_skips(tmp_path, shared_data):
    """`python -m distillspec train` (what `accelerate launch -m distillspec train` runs on every process) writes
    01's prompt sets when missing and the named run's draft where `run` looks for it."""
    from distillspec.__main__ import main
    from distillspec.study.pipeline import plan
    from distillspec.study.rundir import RunPaths

    data = yaml.safe_load(open("configs/tiny.yaml"))
    data.update(data_source=str(shared_data), max_steps=2, logging_steps=1, save_steps=10, n_train=8, n_eval=2)
    config = tmp_path / "tiny_train.yaml"
    config.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--draft", "skd", "--run-dir", str(run)]) == 0
    paths = RunPaths(run)
    assert paths.train_prompts.is_file() and (paths.student("skd") / "model.safetensors").is_file()
    assert yaml.safe_load((paths.draft_dir("skd") / "config.yaml").read_text())["rollout"] == "skd"
    steps = {s.executed: s.done(run) for s in plan(StudyConfig.from_yaml(config), config, run)}
    assert steps["02_distill_skd.ipynb"] and not steps["02_distill_fkl.ipynb"]
    assert main(["train", "--config", str(config), "--draft", "nope", "--run-dir", str(run)]) == 2
