"""The speed tools: the cost model's arithmetic, timing SD against target-only generate, the speed table, and the
config's speed and draft-vocabulary settings. No test asserts a duration: timings only have to be well formed."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from distillspec.study.preset import StudyConfig
from distillspec.errors import DistillSpecError
from distillspec.metrics import expected_tokens_per_step, ideal_speedup
from distillspec.sampling import SamplingConfig
from distillspec.lookup import PromptLookup
from distillspec.speed import (BlockAcceptance, StepCosts, forward_steps, measure_step_costs, text_logits,
                               time_decoding)
from distillspec.study.tables import speed_summary


def _cpu_like_costs() -> StepCosts:
    """Verification costs shaped like this project's CPU measurements: 5 new tokens cheaper than 2-4."""
    target = {1: 0.062, 2: 0.107, 3: 0.126, 4: 0.097, 5: 0.080, 6: 0.086, 7: 0.105, 8: 0.081, 9: 0.090}
    return StepCosts(target, draft_s=0.006, batch_size=1, context=150)


def test_cost_model_is_leviathans_formula_when_verification_costs_one_step():
    costs = StepCosts({k: 0.05 for k in range(1, 10)}, draft_s=0.01, batch_size=1, context=100)
    for alpha in (0.0, 0.3, 0.8):
        for gamma in (1, 4, 8):
            assert costs.speedup(alpha, gamma) == pytest.approx(ideal_speedup(alpha, gamma, 0.2))
    assert costs.c == pytest.approx(0.2) and costs.max_gamma == 8


def test_cut_blocks_are_priced_by_their_acceptance_per_depth_and_the_lengths_on_offer():
    """BlockAcceptance: full blocks at one acceptance price as one alpha does; a lookup that matches in some steps
    pays one target step for one token where it has no match, and is cut to what its matches offer."""
    costs = _cpu_like_costs()
    gamma = 6
    rng = np.random.default_rng(0)
    accepted = np.minimum(rng.geometric(1 - 0.6, 20_000) - 1, gamma)  # i.i.d. acceptance 0.6, blocks of 6
    full = BlockAcceptance.from_steps(np.full_like(accepted, gamma), accepted)
    assert full.accept == pytest.approx([0.6] * gamma, abs=0.02)
    for g in (1, 3, 6):
        assert costs.speedup(full, g) == pytest.approx(costs.speedup(0.6, g), rel=0.02)
    no_match = BlockAcceptance.from_steps([0] * 10, [0] * 10)
    assert costs.speedup(no_match, 4) == pytest.approx(1.0) and no_match.expected_tokens(4) == 1.0
    # half the steps offer 2 tokens, always accepted; the rest nothing: 2 tokens per step cost at most a 3-token pass
    lookup = BlockAcceptance.from_steps([2, 0] * 50, [2, 0] * 50)
    assert lookup.accept == (1.0, 1.0) and lookup.offered == {0: 0.5, 2: 0.5}
    expected = (0.5 * 3 + 0.5 * 1) * costs.target_s[1] / (0.5 * (2 * costs.draft_s + costs.target_s[3])
                                                          + 0.5 * costs.target_s[1])
    assert costs.speedup(lookup, 5) == pytest.approx(expected) == pytest.approx(costs.speedup(lookup, 2))
    assert BlockAcceptance.from_dict(json.loads(json.dumps(lookup.as_dict()))) == lookup


def test_a_hybrid_is_priced_as_a_mixture_of_its_lookup_and_draft_steps():
    costs = _cpu_like_costs()
    lookup = BlockAcceptance.from_steps([3, 3, 1, 2] * 25, [3, 1, 0, 2] * 25)
    assert costs.hybrid_speedup(lookup, 0.4, 1.0, 3, 2) == pytest.approx(costs.per_step(lookup, 3, 0.0)[0]
                                                                         * costs.target_s[1]
                                                                         / costs.per_step(lookup, 3, 0.0)[1])
    assert costs.hybrid_speedup(lookup, 0.4, 0.0, 3, 2) == pytest.approx(costs.speedup(0.4, 2))
    assert costs.hybrid_speedup(lookup, 0.4, 0.0, 3, 0) == pytest.approx(1.0)
    best = costs.best_hybrid_blocks(lookup, 0.4, 0.5)
    assert costs.hybrid_speedup(lookup, 0.4, 0.5, *best) >= max(costs.hybrid_speedup(lookup, 0.4, 0.5, a, b)
                                                                for a in range(9) for b in range(9))
    assert costs.best_hybrid_blocks(lookup, 0.0, 0.5)[1] == 0  # a draft never accepted only costs time


def test_cost_model_picks_the_cheap_verification_and_needs_more_acceptance_for_more_speed():
    costs = _cpu_like_costs()
    assert costs.verify_ratio(4) < costs.verify_ratio(2)
    assert costs.best_gamma(0.5) == 4  # the 5-token verification is the cheapest multi-token one
    assert costs.speedup(0.0, 1) < 1.0  # a draft that is never accepted only costs time
    even, gamma_even = costs.needed_alpha(1.0)
    goal, _ = costs.needed_alpha(1.3)
    assert 0 < even < goal < 1
    assert costs.speedup(even, gamma_even) >= 1.0 > max(costs.speedup(even - 0.01, g) for g in range(1, 9))
    assert StepCosts.from_dict(costs.as_dict()) == costs
    with pytest.raises(DistillSpecError, match="measured 1..8"):
        costs.speedup(0.5, 9)


def test_the_policy_drafts_nothing_where_no_draft_length_pays():
    """gamma 0 (the target alone) when every gamma is predicted slower: a costly draft at low acceptance, or a batch
    where verifying costs far more than a step; the same draft drafts once it is accepted often enough."""
    costs = _cpu_like_costs()
    assert costs.speedup(0.3, 0) == 1.0 and costs.verify_ratio(0) == 1.0
    assert costs.best_gamma(0.0) == 0 and costs.best_gamma(0.9) > 0
    compute_bound = StepCosts({k: 0.05 * k for k in range(1, 10)}, draft_s=0.01, batch_size=16, context=150)
    assert compute_bound.best_gamma(0.6) == 0
    assert all(compute_bound.speedup(0.6, g) < 1.0 for g in range(1, 9))


def test_what_sampling_costs_each_side_enters_the_prediction():
    """Target-only generate pays its sampling per token, the decoder per step (its verification's draws) and per
    drafted token: with those costs the formula is the forwards' with each term widened, and costs saved before
    these fields existed (no sampling costs) predict as they did."""
    base = _cpu_like_costs()
    sampled = StepCosts({**base.target_s}, base.draft_s, 1, 150, sample_s={k: 0.001 * k for k in range(1, 10)},
                        draft_sample_s=0.0005, generate_sample_s=0.008)
    for alpha, gamma in ((0.3, 1), (0.6, 4), (0.8, 8)):
        seconds = gamma * (0.006 + 0.0005) + base.target_s[gamma + 1] + 0.001 * (gamma + 1)
        assert sampled.speedup(alpha, gamma) == pytest.approx(
            expected_tokens_per_step(alpha, gamma) * (base.target_s[1] + 0.008) / seconds)
    # generate's sampling is dearer than the decoder's per token: the same draft is predicted faster
    assert sampled.speedup(0.5, 4) > base.speedup(0.5, 4)
    lookup = BlockAcceptance.from_steps([3, 0] * 10, [2, 0] * 10)
    copy_tokens, copy_s = sampled.per_step(lookup, 3, draft_s=0.0)  # copies cost nothing to draft, nor to draw
    assert copy_s == pytest.approx(0.5 * sampled.verify_s(4) + 0.5 * sampled.verify_s(1))
    assert sampled.hybrid_speedup(lookup, 0.4, 1.0, 3, 2) == pytest.approx(copy_tokens * sampled.token_s / copy_s)
    old = {k: v for k, v in base.as_dict().items() if k not in ("sample_s", "draft_sample_s", "generate_sample_s")}
    assert StepCosts.from_dict(old) == base
    assert StepCosts.from_dict(json.loads(json.dumps(sampled.as_dict()))) == sampled


@pytest.fixture(scope="module")
def tiny_teacher_and_draft():
    from distillspec.models import draft_from_teacher, load_model

    teacher, tok = load_model("tiny-qwen3")
    return teacher, draft_from_teacher(teacher, 1), tok


def test_step_costs_are_measured_for_every_verification_size(tiny_teacher_and_draft):
    teacher, draft, _ = tiny_teacher_and_draft
    costs = measure_step_costs(teacher, draft, batch_size=2, context=20, max_gamma=3, reps=2)
    assert sorted(costs.target_s) == [1, 2, 3, 4]
    assert all(s > 0 for s in costs.target_s.values()) and costs.draft_s > 0
    with pytest.raises(DistillSpecError, match="max_gamma=0"):
        measure_step_costs(teacher, draft, batch_size=1, context=20, max_gamma=0)
    assert costs.sample_s == {} and costs.generate_sample_s == costs.draft_sample_s == 0.0  # forwards only


def test_sampling_costs_are_measured_on_the_logits_given(tiny_teacher_and_draft):
    """With a sampling, every verification size, the draft's draw and generate's draw are timed, on real text's
    logits when given; bad logits are refused."""
    teacher, draft, tok = tiny_teacher_and_draft
    logits = text_logits(teacher, [tok("The cat sat on the mat and looked")["input_ids"]], positions=6)
    assert logits.shape == (6, teacher.config.vocab_size) and logits.dtype == torch.float32
    for sampling in (SamplingConfig(temperature=0.7, top_p=0.9), SamplingConfig(greedy=True)):
        costs = measure_step_costs(teacher, draft, batch_size=2, context=20, max_gamma=3, reps=2, sampling=sampling,
                                   logits=logits)
        assert sorted(costs.sample_s) == [1, 2, 3, 4] and all(s > 0 for s in costs.sample_s.values())
        assert costs.draft_sample_s > 0 and costs.generate_sample_s > 0
    lookup_costs = measure_step_costs(teacher, PromptLookup(2), batch_size=1, context=20, max_gamma=2, reps=2,
                                      sampling=SamplingConfig(temperature=0.7))
    assert lookup_costs.draft_s == lookup_costs.draft_sample_s == 0.0 and sorted(lookup_costs.sample_s) == [1, 2, 3]
    with pytest.raises(DistillSpecError, match=r"give \[N, V\]"):
        measure_step_costs(teacher, draft, batch_size=1, context=20, max_gamma=1, sampling=SamplingConfig(),
                           logits=logits[0])


def test_timed_forwards_with_left_padding_score_each_row_as_if_it_were_alone(tiny_teacher_and_draft):
    """forward_steps' left_pad (a ragged batch, as decoding runs it): a padded row's logits are those of its real
    tokens alone, the unpadded row is untouched, and bad counts are refused."""
    teacher, _, _ = tiny_teacher_and_draft
    with torch.inference_mode():
        torch.manual_seed(0)
        padded = forward_steps(teacher, batch_size=2, context=12, new_tokens=[2], left_pad=[0, 5])[2]().logits
        torch.manual_seed(0)
        ids = torch.randint(100, 1000, (2, 14))  # the ids forward_steps drew: its first draw, same seed
        torch.manual_seed(0)
        plain = forward_steps(teacher, batch_size=2, context=12, new_tokens=[2])[2]().logits
        alone = teacher(input_ids=ids[1:, 5:]).logits[:, -2:]  # row 1 without its 5 padding slots
    torch.testing.assert_close(padded[1:], alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(padded[:1], plain[:1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(padded[1:], plain[1:], atol=1e-3)
    with pytest.raises(DistillSpecError, match="left_pad"):
        forward_steps(teacher, batch_size=2, context=12, new_tokens=[1], left_pad=[12, 0])


def test_a_slow_spell_of_the_machine_does_not_skew_one_forward_against_another(monkeypatch):
    """Two equally costly steps; the machine runs 3x slower for the first 8 calls. Timed in rounds, each step gets
    only some of the slow calls and both medians stay 1 (one after the other, the first step's would be 3)."""
    from distillspec import speed

    clock = {"now": 0.0, "calls": 0}

    def step():
        clock["calls"] += 1
        clock["now"] += 3.0 if clock["calls"] <= 8 else 1.0

    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock["now"])
    assert speed.median_seconds_each({"a": step, "b": step}, reps=10) == {"a": 1.0, "b": 1.0}
    clock.update(now=0.0, calls=0)
    assert speed.median_seconds(step, reps=10) == 3.0  # alone, the step sits inside the slow spell


def test_timed_greedy_sd_writes_the_targets_text(tiny_teacher_and_draft, tokenizer):
    teacher, draft, tok = tiny_teacher_and_draft
    prompts = [tok.encode(t) for t in ("What is 2 + 3?", "Say hello.", "Count to five:")]
    rows = time_decoding(teacher, draft, tok, prompts, gamma=3, sampling=SamplingConfig(greedy=True), batch_size=1,
                         max_new_tokens=10)
    assert len(rows) == 3 and rows["identical"].all()
    assert (rows["sd_tokens"] == rows["target_tokens"]).all()
    assert (rows["sd_s"] > 0).all() and (rows["target_s"] > 0).all()
    assert (rows["accepted"] <= rows["verified"]).all() and (rows["verified"] <= rows["proposed"]).all()
    alone = time_decoding(teacher, draft, tok, prompts, gamma=0, sampling=SamplingConfig(greedy=True), batch_size=2,
                          max_new_tokens=10)  # the policy's gamma 0: the decoder is the target alone
    assert alone["identical"].all() and (alone["proposed"] == 0).all() and (alone["sd_tokens"] > 0).all()
    assert (alone["sd_s"] == alone["target_s"]).all()  # one call timed once, not the machine's noise between two
    summary = speed_summary({"d": alone.assign(setting="greedy, batch 2")}, {}).iloc[0]
    assert summary["gamma"] == 0 and math.isnan(summary["alpha_pos"]) and math.isnan(summary["tau"])
    assert summary["speedup"] == summary["speedup_lo"] == summary["speedup_hi"] == 1.0
    sampled = time_decoding(teacher, draft, tok, prompts, gamma=2, batch_size=2, max_new_tokens=6,
                            sampling=SamplingConfig(temperature=0.6, top_p=0.95))
    assert list(sampled["prompts"]) == [2, 1] and sampled["identical"].isna().all()


def test_speed_summary_ratio_ci_and_prediction():
    rng = np.random.default_rng(0)
    n = 12
    target_s = rng.uniform(1.0, 2.0, n)
    frame = pd.DataFrame({"setting": "greedy, batch 1", "batch": range(n), "prompts": 1, "gamma": 4,
                          "target_s": target_s, "target_tokens": 100, "sd_s": target_s / 1.5, "sd_tokens": 100,
                          "steps": 40, "target_calls": 40, "accepted": 60, "verified": 100, "proposed": 160,
                          "identical": True})
    costs = _cpu_like_costs()
    out = speed_summary({"fkl": frame}, {"fkl": [{"setting": "greedy, batch 1", "gamma": 4, "pilot_alpha": 0.5,
                                                   "costs": costs.as_dict()}]})
    row = out.iloc[0]
    assert row["speedup"] == pytest.approx(1.5) and row["speedup_lo"] <= 1.5 <= row["speedup_hi"]
    assert row["alpha_pos"] == pytest.approx(0.6) and row["predicted_speedup"] == pytest.approx(costs.speedup(0.6, 4))
    assert row["identical"] == 1.0 and row["n_prompts"] == n and row["tau"] == pytest.approx(2.5)
    frame["sd_s"] = target_s * rng.uniform(0.5, 1.5, n)  # noisy: the interval must widen around the estimate
    noisy = speed_summary({"fkl": frame}, {}).iloc[0]
    assert noisy["speedup_lo"] < noisy["speedup"] < noisy["speedup_hi"] and math.isnan(noisy["predicted_speedup"])


def test_a_draft_vocabulary_without_eos_or_template_markers_is_refused(tokenizer):
    from distillspec.draft_vocab import check_draft_vocab

    prompt = list(tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                                add_generation_prompt=True)["input_ids"])
    special = set(tokenizer.all_special_ids)
    markers = sorted({i for i in prompt if i in special})
    assert markers, "the chat template must use special tokens for this test to mean anything"
    text_ids = [i for i in prompt if i not in special]
    check_draft_vocab(sorted(set(text_ids) | set(markers) | {tokenizer.eos_token_id}), tokenizer, [prompt])
    with pytest.raises(DistillSpecError, match="leaves out"):
        check_draft_vocab(sorted(set(text_ids) | set(markers) - {tokenizer.eos_token_id}), tokenizer, [prompt])
    without_marker = sorted((set(text_ids) | {tokenizer.eos_token_id}) - {markers[0]})
    with pytest.raises(DistillSpecError, match="chat template"):
        check_draft_vocab(without_marker, tokenizer, [prompt])
    with pytest.raises(DistillSpecError, match="outside the tokenizer"):
        check_draft_vocab([*markers, tokenizer.eos_token_id, len(tokenizer) + 5], tokenizer, [prompt])


def test_a_finished_runs_draft_loads_as_03_decodes_with_it(tiny_run):
    """stages.decoding_draft (the benchmarks' entry): the run's cut head by default, the trained full head on
    request, the baseline by name."""
    import json

    from distillspec.pair import load_target
    from distillspec.study.stages import decoding_draft

    config, run_dir, _ = tiny_run
    cfg = StudyConfig.from_yaml(config)
    target, tok = load_target(cfg.for_decoding())
    kept = json.loads((run_dir / "data" / "draft_vocab.json").read_text())["ids"]
    cut = decoding_draft(cfg, run_dir, target, tok, "fkl")
    assert cut.draft_vocab_ids.tolist() == kept
    full = decoding_draft(cfg, run_dir, target, tok, "fkl", full_head=True)
    assert getattr(full, "draft_vocab_ids", None) is None
    assert full.get_output_embeddings().weight.shape[0] == len(tok)
    baseline = decoding_draft(cfg, run_dir, target, tok, "baseline")
    assert baseline.config.num_hidden_layers == cfg.student_keep_layers
