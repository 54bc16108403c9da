"""Feature heads (EAGLE-style) in the batched decoder: exact in greedy for every gamma, the target's distribution
when sampling, the same after save and load, and refused beside a target they were not trained for."""

import pytest
import torch

from distillspec import DistillSpecError
from distillspec.acceptance import RejectionSampling
from distillspec.config import Config
from distillspec.eagle import EagleHead, load_head, save_head
from distillspec.head_training import head_loss, train_head
from distillspec.teacher_text import text_batch
from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate
from distillspec.tiny import tiny_model

from test_specdec import SIGNIFICANCE, _chi2_pvalue, _exact_joint, _first_tokens_sd, _greedy_reference, _prompts


@pytest.fixture(scope="module")
def target():
    return tiny_model("qwen3", seed=1, init_std=0.5, hidden_size=32)


@pytest.fixture(scope="module")
def trained_head(target, tokenizer, tmp_path_factory):
    """A head trained briefly on the tiny target's text (its loss falls, its acceptance is partial)."""
    out = tmp_path_factory.mktemp("head")
    cfg = Config(teacher="tiny-qwen3", draft_kind="eagle", divergence="fkl", max_steps=80, batch_size=4,
                 learning_rate=3e-3, logging_steps=10, save_steps=40, train_max_new_tokens=24, max_new_tokens=24)
    prompts = _prompts([6, 11, 3, 17, 9, 4, 13, 8] * 4, seed=5)
    result = train_head(cfg, out, target=target, tokenizer=tokenizer, prompts=prompts)
    return load_head(result.student_dir, target), out


@pytest.fixture(scope="module")
def fused_head(target, tokenizer, tmp_path_factory):
    """A fused head (three layers of the target, EAGLE-3) trained over three drafted positions, later ones weighing
    less, on the same text as trained_head."""
    out = tmp_path_factory.mktemp("fused")
    cfg = Config(teacher="tiny-qwen3", draft_kind="eagle", divergence="fkl", max_steps=80, batch_size=4,
                 learning_rate=3e-3, logging_steps=10, save_steps=40, train_max_new_tokens=24, max_new_tokens=24,
                 head_features="fused", head_unroll=3, head_depth_decay=0.8)
    prompts = _prompts([6, 11, 3, 17, 9, 4, 13, 8] * 4, seed=5)
    result = train_head(cfg, out, target=target, tokenizer=tokenizer, prompts=prompts)
    return load_head(result.student_dir, target), out


@pytest.fixture(scope="module", params=["top", "fused"])
def any_head(request, trained_head, fused_head):
    """Each kind of feature a head reads, trained."""
    return trained_head if request.param == "top" else fused_head


@pytest.fixture(scope="module")
def echo():
    """A one-layer target and a head that recomputes it from the tokens alone (fc passes the embedding, the layer is
    the target's): it agrees often but not always (it lacks each sequence's first token), and ignores features."""
    one_layer = tiny_model("qwen3", seed=1, init_std=0.5, hidden_size=32, num_layers=1)
    head = EagleHead(one_layer, init_from_layer=0).eval()
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
        head.fc.weight[:, :32].copy_(torch.eye(32))
    prompts = _prompts()
    eos = _greedy_reference(one_layer, prompts[:1], 40, None)[0][7]
    return one_layer, head, prompts, eos, _greedy_reference(one_layer, prompts, 40, eos)


@pytest.fixture(scope="module")
def greedy_case(target):
    prompts = _prompts()
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][7]
    return prompts, eos, _greedy_reference(target, prompts, 40, eos)


def test_training_lowers_the_loss_and_logs_like_a_draft(any_head):
    import pandas as pd

    _, out = any_head
    log = pd.read_json(out / "train_log.jsonl", lines=True)
    assert list(log["step"]) == list(range(10, 90, 10))
    assert log["loss"].iloc[-1] < 0.7 * log["loss"].iloc[0]
    assert log["expected_accept"].iloc[-1] > log["expected_accept"].iloc[0]


@pytest.mark.parametrize("gamma", range(1, 9))
@pytest.mark.parametrize("bonus", [True, False])
def test_greedy_sd_with_a_head_is_token_identical_to_the_target(echo, gamma, bonus):
    target, head, prompts, eos, refs = echo
    assert len({len(r) for r in refs}) > 1 and min(map(len, prompts)) == 1, "ragged rows, a one-token prompt"
    res = speculative_generate(target, head, prompts, gamma=gamma, max_new_tokens=40, eos_token_id=eos, bonus=bonus)
    assert res.sequences == refs
    assert 0.05 < res.metrics.alpha_tok < 0.95, "the head must exercise partial acceptance"
    assert res.metrics.max_new_per_forward_draft <= gamma + 1  # the accepted prefix and the next token, at most


@pytest.mark.parametrize("gamma", [1, 4, 8])
def test_a_trained_head_that_reads_features_stays_exact(target, any_head, greedy_case, gamma):
    head, _ = any_head
    prompts, eos, refs = greedy_case
    assert min(map(len, prompts)) == 1, "a one-token prompt: no feature yet"
    assert speculative_generate(target, head, prompts, gamma=gamma, max_new_tokens=40, eos_token_id=eos
                                ).sequences == refs


def test_a_trained_heads_draft_tree_stays_exact_and_keeps_more_per_step(target, any_head, greedy_case):
    """A static tree drafted on the head's own features (top or fused) verifies to the target's greedy text, and
    keeps at least as many drafts per step as the head's chain of its first choices."""
    head, _ = any_head
    prompts, eos, refs = greedy_case
    tree = {(0,), (1,), (0, 0), (0, 1), (0, 0, 0)}
    chain = speculative_generate(target, head, prompts, gamma=3, max_new_tokens=40, eos_token_id=eos)
    grown = speculative_generate(target, head, prompts, gamma=3, max_new_tokens=40, eos_token_id=eos, draft_tree=tree)
    assert grown.sequences == chain.sequences == refs
    assert grown.metrics.accepted / grown.metrics.steps >= chain.metrics.accepted / chain.metrics.steps


def test_a_fused_head_reads_three_layers_of_its_target(target, fused_head):
    """The fused head's features are the inputs of EAGLE-3's low, middle and high layer (kept inside a 2-layer
    target), projected by its own weights; they differ from the top state, and the projection is trained."""
    from distillspec.eagle import fused_layers, target_features

    head, _ = fused_head
    assert head.feature_layers == fused_layers(2) == (1, 1, 0) and fused_layers(30) == (2, 15, 27)
    assert head.feature_width == 3 * 32 and head.fuse.weight.shape == (32, 96)
    seq = torch.tensor([[5, 9, 11, 40]])
    with torch.no_grad():
        _, top = target_features(target, seq, torch.ones_like(seq))
        logits, fused = target_features(target, seq, torch.ones_like(seq), layers=head.feature_layers)
        plain = target(seq).logits
    assert fused.shape == (1, 4, 96) and not torch.allclose(fused[..., -32:], top)
    torch.testing.assert_close(logits, plain)  # the same forward's logits, whatever features it hands over


def test_a_head_with_a_reduced_vocabulary_stays_exact(echo):
    import copy

    target, head, prompts, eos, refs = echo
    kept = sorted({t for r in refs for t in r} | {eos} | set(range(0, 4000)))
    cut = copy.deepcopy(head).attach(target).reduce_vocab(kept)
    res = speculative_generate(target, cut, prompts, gamma=4, max_new_tokens=40, eos_token_id=eos)
    assert res.sequences == refs
    assert 0.05 < res.metrics.alpha_tok < 0.95


def test_a_hybrid_with_a_fused_head_stays_exact(target, fused_head):
    """Steps that prompt lookup drafts leave the head's pending pairs waiting beside the target's fused features of
    the text they accepted (a one-token prompt's zeros among them): greedy output is still the target's own."""
    from distillspec.lookup import Hybrid, PromptLookup

    head, _ = fused_head
    prompts = [p * 3 for p in _prompts()] + [[7]]  # repeated chunks: lookup matches in some steps
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][7]
    refs = _greedy_reference(target, prompts, 40, eos)
    res = speculative_generate(target, Hybrid(head, PromptLookup(2)), prompts, gamma=4, max_new_tokens=40,
                               eos_token_id=eos)
    assert res.sequences == refs
    assert res.steps_df()["source"].nunique() == 2, "both the lookup and the head proposed"
    single = [[7], [12]]  # every prompt one token: the head's first feature is zeros of the target's width
    refs = _greedy_reference(target, single, 20, eos)
    for draft in (head, Hybrid(head, PromptLookup(2))):
        assert speculative_generate(target, draft, single, gamma=3, max_new_tokens=20, eos_token_id=eos
                                    ).sequences == refs


def test_each_block_starts_from_the_targets_features(target, any_head):
    """The first draft of every block comes from the target's features of the accepted text: its q equals the head
    run teacher-forced over the final text (pair t: token t+1 beside the target's feature at t), position for
    position. A feature handed over one slot off (or from other layers) would change it."""
    import numpy as np

    from distillspec.eagle import target_features

    head, _ = any_head
    prompts = _prompts([5, 9, 2, 13], seed=2)
    res = speculative_generate(target, head, prompts, gamma=3, max_new_tokens=30, eos_token_id=[],
                               sampling=SamplingConfig(temperature=1.0), seed=3)
    tokens, steps = res.tokens_df(), res.steps_df()
    checked = 0
    for row, prompt in enumerate(prompts):
        emitted = steps[steps["row"] == row].sort_values("step")["emitted"].cumsum().shift(fill_value=0)
        starts = dict(zip(steps[steps["row"] == row].sort_values("step")["step"], emitted))
        seq = torch.tensor([prompt + res.sequences[row]])
        with torch.no_grad():
            _, feats = target_features(target, seq, torch.ones_like(seq), layers=head.feature_layers)
            out = head(seq[:, 1:], feats[:, :-1], attention_mask=torch.ones_like(seq[:, 1:]),
                       position_ids=torch.arange(seq.shape[1] - 1)[None])
        q = torch.softmax(out.logits[0].float(), -1)  # pair j predicts token j + 2
        firsts = tokens[(tokens["row"] == row) & (tokens["pos"] == 0)]
        for step, token, q_t1 in zip(firsts["step"], firsts["token"], firsts["q_t1"]):
            j = len(prompt) + int(starts[step]) - 2
            np.testing.assert_allclose(q_t1, float(q[j, token]), rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked >= 20


@pytest.fixture(scope="module")
def small_vocab_target():
    return tiny_model("llama", vocab_size=8, seed=11, init_std=1.0, hidden_size=16)


@pytest.mark.parametrize("warp,features", [(dict(temperature=0.9), "top"), (dict(temperature=0.7, top_p=0.8), "top"),
                                           (dict(temperature=0.8), "fused")])
def test_sampled_sd_with_a_head_matches_the_target_distribution(small_vocab_target, warp, features):
    """Chi-square goodness of fit of the first 3 tokens (20,000 draws) to the exact target distribution."""
    target = small_vocab_target
    torch.manual_seed(0)
    head = EagleHead(target, features=features).eval()
    if head.fuse is not None:  # this target's residual stream is large (init_std 1): untrained, the fused head's
        with torch.no_grad():  # q would be nearly one-hot, accepted almost never, and the test would check little
            head.fuse.weight.mul_(0.05)
    exact = _exact_joint(target, SamplingConfig(**warp), 8)
    samples = _first_tokens_sd(target, head, RejectionSampling(), 20_000, **warp)
    assert _chi2_pvalue(samples, exact) > SIGNIFICANCE
    res = speculative_generate(target, head, [[1, 5, 3]] * 200, gamma=2, max_new_tokens=3, eos_token_id=[],
                               sampling=SamplingConfig(**warp))
    assert 0.05 < res.metrics.alpha_tok < 0.95, "a head that is not the target: partial acceptance"


def test_save_then_load_decodes_identically(target, any_head, greedy_case, tmp_path):
    head, _ = any_head
    prompts, eos, _ = greedy_case
    sampling = SamplingConfig(temperature=0.8)
    before = speculative_generate(target, head, prompts, gamma=3, max_new_tokens=30, eos_token_id=eos,
                                  sampling=sampling, seed=7)
    save_head(head, tmp_path / "head")
    again = load_head(tmp_path / "head", target)
    assert again.features == head.features
    after = speculative_generate(target, again, prompts, gamma=3, max_new_tokens=30, eos_token_id=eos,
                                 sampling=sampling, seed=7)
    assert after.sequences == before.sequences
    assert after.tokens_df().equals(before.tokens_df())


def test_a_head_is_refused_beside_another_target(target, trained_head, tmp_path):
    head, _ = trained_head
    save_head(head, tmp_path / "head")
    same_shape = tiny_model("qwen3", seed=2, init_std=0.5, hidden_size=32)
    with pytest.raises(DistillSpecError, match="trained for another target.*parameters differ"):
        load_head(tmp_path / "head", same_shape)
    wider = tiny_model("qwen3", seed=1, init_std=0.5, hidden_size=64)
    with pytest.raises(DistillSpecError, match="hidden_size 32 in the head, 64 in the target"):
        load_head(tmp_path / "head", wider)
    other_family = tiny_model("llama", seed=1, init_std=0.5, hidden_size=32)
    with pytest.raises(DistillSpecError, match="model_type qwen3 in the head, llama in the target"):
        load_head(tmp_path / "head", other_family)
    twin = tiny_model("qwen3", seed=1, init_std=0.5, hidden_size=32)  # same weights, another object
    with pytest.raises(DistillSpecError, match="attached to another model"):
        speculative_generate(twin, head, [[5, 6, 7]], gamma=2, max_new_tokens=4)
    with pytest.raises(DistillSpecError, match="holds no feature head"):
        load_head(tmp_path, target)


def test_head_config_errors():
    with pytest.raises(DistillSpecError, match="draft_kind='medusa' must be one of"):
        Config(draft_kind="medusa")
    with pytest.raises(DistillSpecError, match="SKD rollouts, adaptive_beta and lora apply to standalone drafts"):
        Config(draft_kind="eagle", rollout="skd")
    with pytest.raises(DistillSpecError, match="head_unroll=0 must be >= 1"):
        Config(draft_kind="eagle", head_unroll=0)
    with pytest.raises(DistillSpecError, match="head_features='middle' must be one of \\('top', 'fused'\\)"):
        Config(draft_kind="eagle", head_features="middle")
    with pytest.raises(DistillSpecError, match="head_depth_decay=0 must be in \\(0, 1\\]"):
        Config(draft_kind="eagle", head_depth_decay=0)


def test_unrolled_passes_score_the_head_on_its_own_features(target):
    """head_unroll=2 adds a pass on the head's own features: the loss differs from a one-pass loss, and a head whose
    own features equal the teacher's would score the same in both passes."""
    torch.manual_seed(0)
    head = EagleHead(target).float()
    rows = [{"prompt": [5, 9, 11], "completion": [40, 41, 42, 43, 2]}, {"prompt": [7], "completion": [8, 9, 10]}]
    from distillspec.teacher_text import teacher_features

    feats = teacher_features(target, rows)
    batch = text_batch(rows, feats)
    weight = target.get_output_embeddings().weight.detach()
    one = head_loss(head, batch, Config(draft_kind="eagle", head_unroll=1), weight)
    two = head_loss(head, batch, Config(draft_kind="eagle", head_unroll=2), weight)
    assert torch.isfinite(one["loss"]) and torch.isfinite(two["loss"])
    assert abs(float(one["loss"].detach()) - float(two["loss"].detach())) > 1e-6
    one["loss"].backward()
    assert head.fc.weight.grad is not None and head.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("features", ["top", "fused"])
def test_each_unrolled_pass_weighs_decay_to_the_power_of_its_depth(target, features):
    """With head_depth_decay d the loss is sum_k d^k L_k / sum_k d^k over the passes: read each pass's loss off
    equal weights (decay 1) at unroll 1 and 2, then the decayed loss must be their weighted mean."""
    from distillspec.eagle import fused_layers
    from distillspec.teacher_text import teacher_features

    torch.manual_seed(0)
    head = EagleHead(target, features=features).float()
    rows = [{"prompt": [5, 9, 11], "completion": [40, 41, 42, 43, 2]}, {"prompt": [7], "completion": [8, 9, 10]}]
    layers = fused_layers(2) if features == "fused" else ()
    batch = text_batch(rows, teacher_features(target, rows, layers=layers))
    weight = target.get_output_embeddings().weight.detach()

    def loss(**keys) -> float:
        with torch.no_grad():
            return float(head_loss(head, batch, Config(draft_kind="eagle", head_features=features, **keys),
                                   weight)["loss"])

    first = loss(head_unroll=1)
    second = 2 * loss(head_unroll=2) - first
    assert abs(second - first) > 1e-4, "the second pass (on the head's own features) scores differently"
    assert loss(head_unroll=2, head_depth_decay=0.5) == pytest.approx((first + 0.5 * second) / 1.5, rel=1e-5)


def test_export_refuses_a_head_and_says_why(trained_head, tmp_path):
    from distillspec.export import export_draft

    head, _ = trained_head
    save_head(head, tmp_path / "head")
    with pytest.raises(DistillSpecError, match="top hidden state.*no engine loads that layout.*head_features: fused"):
        export_draft(tmp_path / "head", tmp_path / "out", engine="vllm", gamma=3, target="tiny-qwen3")
    assert not (tmp_path / "out").exists()


def test_a_fused_head_exports_in_speculators_eagle3_layout(target, fused_head, tokenizer, tmp_path):
    """The export names each weight as speculators' eagle3 model does, with the head's study vocabulary as its draft
    vocabulary (benchmarks/check_speculators_export.py loads one with speculators itself: make check-speculators)."""
    import json

    from safetensors.torch import load_file

    from distillspec.export import export_draft

    head, _ = fused_head
    target.save_pretrained(tmp_path / "target")
    tokenizer.save_pretrained(tmp_path / "target")
    study = tmp_path / "study"
    save_head(head, study / "drafts" / "v2" / "student")
    vocab = [*range(4000), 40000]
    (study / "data").mkdir()
    (study / "data" / "draft_vocab.json").write_text(json.dumps({"ids": vocab}))
    saved = study / "drafts" / "v2" / "student"
    with pytest.raises(DistillSpecError, match="exported for vLLM only.*pass --to vllm"):
        export_draft(saved, tmp_path / "out", engine="hf", target=str(tmp_path / "target"), gamma=3)
    out = export_draft(saved, tmp_path / "out", engine="vllm", target=str(tmp_path / "target"), gamma=3)
    config = json.loads((out / "config.json").read_text())
    assert config["speculators_model_type"] == "eagle3" and config["architectures"] == ["Eagle3Speculator"]
    assert config["eagle_aux_hidden_state_layer_ids"] == list(head.feature_layers)
    assert config["draft_vocab_size"] == len(vocab) and config["transformer_layer_config"]["num_hidden_layers"] == 1
    assert config["speculators_config"]["proposal_methods"] == [{"proposal_type": "greedy", "speculative_tokens": 3}]
    weights = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(weights["fc.weight"], head.fuse.weight.detach())
    torch.testing.assert_close(weights["layers.0.hidden_norm.weight"],
                               head.body.layers[0].hidden_norm.weight.detach())
    assert weights["layers.0.self_attn.q_proj.weight"].shape[1] == 2 * 32  # [embedding; feature]
    torch.testing.assert_close(weights["norm.weight"], target.model.norm.weight.detach())
    lm_head = target.get_output_embeddings().weight.detach()
    torch.testing.assert_close(weights["lm_head.weight"], lm_head[vocab])
    assert (torch.arange(len(vocab)) + weights["d2t"]).tolist() == vocab  # draft id -> target id
    assert weights["t2d"].sum() == len(vocab) and bool(weights["t2d"][40000]) and not bool(weights["t2d"][4000])
    assert "embed_tokens.weight" not in weights  # shared with the target, as EAGLE-3 checkpoints do
    assert "eagle3" in (out / "USAGE.md").read_text()


@pytest.mark.parametrize("threshold", [0.3, 0.9])
def test_a_head_that_stops_when_unsure_stays_exact(echo, threshold):
    target, head, prompts, eos, refs = echo
    res = speculative_generate(target, head, prompts, gamma=6, max_new_tokens=40, eos_token_id=eos,
                               draft_confidence=threshold)
    assert res.sequences == refs
    assert res.metrics.proposed < 6 * res.metrics.target_calls


def test_distill_refuses_a_head_config():
    from distillspec.distillation import distill

    with pytest.raises(DistillSpecError, match="draft_kind is .eagle.: distill trains standalone drafts.*train_head"):
        distill(Config(draft_kind="eagle", teacher="tiny-qwen3"), "/nonexistent")
