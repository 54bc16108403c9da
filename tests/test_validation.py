"""Validation while training (validation.py): a draft or head is decoded against its teacher on prompts of the
training split held out from training, the log records the served acceptance, and a run that asks for it keeps the
checkpoint validated best; the log's lines of one step (trained batches, validation, selection) all survive."""

import json

import pytest
import torch

from distillspec import DistillSpecError
from distillspec.config import Config, Optimisation
from distillspec.data import render_prompts
from distillspec.offline_loop import BEST, train_offline
from distillspec.sampling import SamplingConfig
from distillspec.study.preset import StudyConfig
from distillspec.trainlog import read_log
from distillspec.validation import served_acceptance

TINY = "configs/tiny.yaml"


@pytest.fixture(scope="module")
def tiny_cfg(shared_data):
    return StudyConfig.from_yaml(TINY, data_source=str(shared_data)).run_config()


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_validation_prompts_come_from_the_training_split_and_are_not_trained_on(tiny_cfg, tokenizer):
    cfg = tiny_cfg.replace(validation_prompts=5)
    train, held_out = cfg.train_prompts(tokenizer), cfg.prompt_set("test", 8, tokenizer)
    validation = cfg.validation_set(tokenizer)
    assert len(validation) == 5
    assert not set(validation["id"]) & set(train["id"]) and not set(validation["id"]) & set(held_out["id"])
    # the five prompts of the training split right after the n_train that training uses
    assert validation["id"] == cfg.prompt_set(cfg.train_split, cfg.n_train + 5, tokenizer)["id"][cfg.n_train:]
    whole = cfg.replace(n_train=None, validation_prompts=3).validation_set(tokenizer)  # the split's last three
    assert len(whole) == 3


@pytest.mark.parametrize("keys,message", [
    ({"select_checkpoint": "best"}, "must be one of"),
    ({"select_checkpoint": "validation"}, "set validation_prompts"),
    ({"select_checkpoint": "validation", "validation_prompts": 4, "validation_steps": 3}, "multiple of"),
    ({"validation_prompts": -1}, "validation_prompts=-1"),
    ({"validation_gamma": 0}, "validation_gamma=0"),
])
def test_bad_validation_settings_are_refused_naming_the_key(tiny_cfg, keys, message):
    with pytest.raises(DistillSpecError, match=message):
        tiny_cfg.replace(**keys)


def test_a_run_validated_by_decoding_keeps_its_best_checkpoint(tiny_cfg, tmp_path, tokenizer):
    from distillspec.distillation import distill
    from distillspec.drafts import load_pair

    cfg = tiny_cfg.replace(max_steps=6, save_steps=2, logging_steps=2, validation_prompts=3, validation_gamma=3,
                           select_checkpoint="validation", train_max_new_tokens=12)
    teacher, student, tok = load_pair(cfg, training=True)
    result = distill(cfg, tmp_path / "run", pair=(teacher, student, tok))
    log = read_log(result.log_path)
    trained = log.dropna(subset=["loss"])
    assert trained["step"].tolist() == [2, 4, 6]  # the trained batches' lines survive beside the validations
    validated = log.dropna(subset=["eval_alpha_pos"])
    assert validated["step"].tolist() == [2, 4, 6]
    assert validated["eval_alpha_pos"].between(0, 1).all() and validated["eval_served_expected_accept"].gt(0).all()
    chosen = log.dropna(subset=["selected_step"]).iloc[-1]
    best = validated.loc[validated["eval_alpha_pos"].idxmax()]
    assert int(chosen["selected_step"]) == int(best["step"])
    assert chosen["selected_alpha_pos"] == pytest.approx(best["eval_alpha_pos"])
    kept = _weights(result.student_dir)
    checkpoint = _weights(tmp_path / "run" / f"checkpoint-{int(best['step'])}")
    assert all(torch.equal(kept[k], checkpoint[k]) for k in kept)
    # the logged value is what the kept draft serves: decoded again here, the same number
    from distillspec.models import load_model

    draft, _ = load_model(result.student_dir, dtype=torch.float32)
    again = served_acceptance(teacher, draft, render_prompts(tok, cfg.validation_set(tok)), gamma=3,
                              sampling=SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p),
                              max_new_tokens=12, eos_token_id=tok.eos_token_id)
    assert again["alpha_pos"] == pytest.approx(chosen["selected_alpha_pos"])


def test_a_head_is_validated_and_the_best_one_saved(shared_data, tokenizer, tmp_path):
    from distillspec.data import load_prompts
    from distillspec.eagle import load_head
    from distillspec.head_training import train_head
    from distillspec.tiny import tiny_model

    target = tiny_model("qwen3", seed=1, init_std=0.5, hidden_size=32)
    cfg = Config(teacher="tiny-qwen3", draft_kind="eagle", divergence="fkl", max_steps=4, batch_size=4,
                 learning_rate=3e-3, logging_steps=2, save_steps=2, train_max_new_tokens=12, max_new_tokens=12,
                 data_source=str(shared_data), validation_prompts=2, validation_gamma=2,
                 select_checkpoint="validation")
    prompts = render_prompts(tokenizer, load_prompts("gsm8k", "train", 16, source=shared_data))
    result = train_head(cfg, tmp_path, target=target, tokenizer=tokenizer, prompts=prompts,
                        draft_vocab_ids=list(range(0, 4000, 3)))
    log = read_log(result.log_path)
    validated = log.dropna(subset=["eval_alpha_pos"])
    assert validated["step"].tolist() == [0, 2, 4]
    chosen = log.dropna(subset=["selected_step"]).iloc[-1]
    assert chosen["selected_alpha_pos"] == pytest.approx(validated["eval_alpha_pos"].max())
    assert not (tmp_path / BEST).exists()
    head = load_head(result.student_dir, target)
    assert head.draft_vocab_ids is None  # validation cut the vocabulary only while it decoded


def test_the_offline_loop_ends_with_the_best_evaluated_weights(tmp_path):
    data = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Linear(4, 1)
    scores = iter([0.1, 0.5, 0.9, 0.3, 0.2])  # step 0, 2, 4, 6, 8: step 4 is the best

    def step_loss(pick):
        return {"loss": model(data[pick]).pow(2).mean()}

    snapshots = {}

    def evaluate():
        value = next(scores)
        snapshots[value] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"score": value}

    settings = Optimisation(max_steps=8, batch_size=4, learning_rate=1e-1, save_steps=4, logging_steps=2)
    train_offline(model, len(data), step_loss, settings, tmp_path, evaluate=evaluate, eval_every=2, keep_best="score")
    assert all(torch.equal(v, snapshots[0.9][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, snapshots[0.2][k]) for k, v in model.state_dict().items())
    last = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 8, "selected_step": 4, "selected_alpha_pos": 0.9}


def test_a_logs_lines_of_one_step_are_all_kept_and_a_resumed_step_replaced(tmp_path):
    lines = [{"step": 2, "loss": 3.0}, {"step": 2, "eval_alpha_pos": 0.2}, {"step": 2, "loss": 2.5},
             {"step": 4, "loss": 2.0}, {"step": 4, "eval_alpha_pos": 0.3}, {"step": 4, "train_runtime": 9.0},
             {"step": 4, "selected_step": 4, "selected_alpha_pos": 0.3}]
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    log = read_log(path)
    assert len(log) == 6
    assert log.dropna(subset=["loss"])["loss"].tolist() == [2.5, 2.0]  # the resumed step's line wins
    assert log.dropna(subset=["eval_alpha_pos"])["step"].tolist() == [2, 4]


def test_validation_keys_at_their_defaults_leave_a_studys_fingerprint_as_it_was(shared_data, tmp_path):
    """Records published before the keys existed were made without validation: their fingerprints stay valid."""
    import dataclasses

    from distillspec.study.rundir import RunPaths, fingerprint

    cfg = StudyConfig.from_yaml(TINY, data_source=str(shared_data))
    paths = RunPaths(tmp_path)
    for prompts in (paths.train_prompts, paths.eval_prompts):
        prompts.parent.mkdir(parents=True, exist_ok=True)
        prompts.write_text('{"id": "1"}\n')
    plain = fingerprint(cfg, tmp_path)
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("validation_prompts", "validation_steps",
                                                                    "validation_gamma", "select_checkpoint")}
    assert len(settings) == len(cfg.to_dict()) - 4
    assert fingerprint(dataclasses.replace(cfg, validation_gamma=4, select_checkpoint="last"), tmp_path) == plain
    assert fingerprint(dataclasses.replace(cfg, validation_prompts=8), tmp_path) != plain
