import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from distillspec import DistillSpecError
from distillspec.acceptance import RejectionSampling, TopKAcceptance
from distillspec.metrics import expected_tokens_per_step, ideal_speedup
from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate
from distillspec.tiny import perturbed_copy, tiny_model

LENGTHS = [5, 9, 1, 13, 2, 30]


def _prompts(lengths=LENGTHS, seed=0, high=49000):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, high, (n,), generator=gen).tolist() for n in lengths]


def _greedy_reference(model, prompts, max_new_tokens, eos):
    """The target's own greedy generation, one prompt at a time (no padding), cut after EOS."""
    refs = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=0)[0, len(p):].tolist()
        refs.append(out[: out.index(eos) + 1] if eos is not None and eos in out else out)
    return refs


@pytest.fixture(scope="module")
def greedy_case(tiny_pair):
    """Prompts, an EOS id that row 0 hits after 8 tokens (so rows finish at different steps), references."""
    target, _ = tiny_pair
    prompts = _prompts()
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][7]
    return prompts, eos, _greedy_reference(target, prompts, 40, eos)


@pytest.mark.parametrize("gamma", [1, 3, 5, 8])
def test_greedy_sd_is_token_identical_to_target_generate(tiny_pair, greedy_case, gamma):
    target, draft = tiny_pair
    prompts, eos, refs = greedy_case
    assert len({len(r) for r in refs}) > 1, "rows must finish at different steps"
    res = speculative_generate(target, draft, prompts, gamma=gamma, max_new_tokens=40, eos_token_id=eos)
    assert res.sequences == refs
    m = res.metrics
    assert 0.05 < m.alpha_tok < 0.95, "the pair must exercise partial acceptance"
    assert m.max_new_per_forward_target <= gamma + 1 and m.max_new_per_forward_draft <= 2
    assert m.new_tokens == sum(len(r) for r in refs)


@pytest.mark.parametrize("sampling", ["greedy", {"temperature": 0.8, "top_p": 0.9}])
def test_timing_is_opt_in_and_changes_no_output(tiny_pair, greedy_case, sampling):
    """timed=True times every forward (the metrics' c, forward_s, overhead); off by default, with no per-forward
    host sync, and the tokens, records and counts are the same either way."""
    target, draft = tiny_pair
    prompts, eos, _ = greedy_case
    runs = {timed: speculative_generate(target, draft, prompts, gamma=3, max_new_tokens=24, eos_token_id=eos,
                                        sampling=sampling, seed=5, timed=timed) for timed in (False, True)}
    plain, timed = runs[False], runs[True]
    assert plain.sequences == timed.sequences
    pd.testing.assert_frame_equal(plain.tokens_df(), timed.tokens_df())
    pd.testing.assert_frame_equal(plain.steps_df(), timed.steps_df())
    counts = ("steps", "target_forwards", "draft_forwards", "accepted", "verified", "max_new_per_forward_target",
              "max_new_per_forward_draft")
    assert {k: getattr(plain.metrics, k) for k in counts} == {k: getattr(timed.metrics, k) for k in counts}
    assert np.isnan(plain.metrics.cost_ratio_c) and np.isnan(plain.metrics.overhead)
    assert timed.metrics.cost_ratio_c > 0 and timed.metrics.overhead >= 1.0
    assert timed.metrics.target_forwards == timed.metrics.steps


@pytest.mark.parametrize("compact_fraction", [0.0, 1.0])
def test_exactness_does_not_depend_on_compaction(tiny_pair, greedy_case, compact_fraction):
    target, draft = tiny_pair
    prompts, eos, refs = greedy_case
    res = speculative_generate(target, draft, prompts, gamma=4, max_new_tokens=40, eos_token_id=eos,
                               compact_fraction=compact_fraction)
    assert res.sequences == refs


def test_draft_is_fed_two_slots_only_after_a_fully_accepted_block(tiny_pair, greedy_case):
    """The first draft forward of a step feeds [B, 2] (last draft + bonus token) only when some active row had its
    whole block accepted in the step before; otherwise one slot per row, no hole."""
    target, draft = tiny_pair
    prompts, eos, refs = greedy_case
    widths = []
    hook = draft.register_forward_pre_hook(lambda _, args, kw: widths.append(kw["input_ids"].shape[1]),
                                           with_kwargs=True)
    try:
        gamma = 2
        res = speculative_generate(target, draft, prompts, gamma=gamma, max_new_tokens=40, eos_token_id=eos)
    finally:
        hook.remove()
    assert res.sequences == refs
    steps = res.steps_df()
    per_step = [widths[1 + s * gamma : 1 + (s + 1) * gamma] for s in range(res.metrics.steps)]  # after the prefill
    assert len(widths) == 1 + gamma * res.metrics.steps and all(w[1:] == [1] * (gamma - 1) for w in per_step)
    first = [w[0] for w in per_step]
    for step, width in enumerate(first):
        active = set(steps.loc[steps["step"] == step, "row"])
        before = steps[(steps["step"] == step - 1) & steps["row"].isin(active)]
        assert width == (2 if (before["accepted"] == gamma).any() else 1), f"step {step}"
    assert 1 in first and 2 in first, "the case must exercise both widths"


def test_greedy_exactness_on_a_llama_pair():
    target = tiny_model("llama", seed=7, init_std=0.5, hidden_size=32, num_layers=3)
    draft = perturbed_copy(target, 0.02, seed=1)
    prompts = _prompts([3, 17, 8], seed=2)
    refs = _greedy_reference(target, prompts, 30, None)
    res = speculative_generate(target, draft, prompts, gamma=5, max_new_tokens=30, eos_token_id=[])
    assert res.sequences == refs and res.metrics.accepted > 0


def test_draft_equal_to_target_accepts_everything(tiny_pair):
    target, _ = tiny_pair
    for sampling in ("greedy", SamplingConfig(temperature=0.8)):
        res = speculative_generate(target, target, _prompts([4, 11]), gamma=4, max_new_tokens=23,
                                   sampling=sampling, eos_token_id=[])
        steps = res.steps_df()
        assert res.metrics.alpha_tok == 1.0
        last = steps.groupby("row")["step"].transform("max") == steps["step"]
        assert (steps.loc[~last, "emitted"] == 5).all()  # gamma + 1 per step, bar each row's truncated last
        assert [len(s) for s in res.sequences] == [23, 23]


def _first_tokens_sd(target, draft, rule, n, temperature=0.9, top_k=0, top_p=1.0, seed=0, prompt=(1, 5, 3), gamma=2,
                     draft_tree=None):
    prompts = [list(prompt)] * n
    res = speculative_generate(target, draft, prompts, gamma=gamma, max_new_tokens=3, eos_token_id=[], seed=seed,
                               sampling=SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p),
                               acceptance=rule, record=False, draft_tree=draft_tree)
    return np.array(res.sequences)


def _exact_joint(target, sampling, vocab, length=3, prompt=(1, 5, 3)):
    """Exact target distribution of the first `length` tokens after the prompt (enumerated)."""
    probs = {(): 1.0}
    for _ in range(length):
        nxt = {}
        prefixes = list(probs)
        ids = torch.tensor([[*prompt, *p] for p in prefixes])
        with torch.no_grad():
            dist = sampling.probs(target(ids).logits[:, -1].float())
        for prefix, row in zip(prefixes, dist.tolist()):
            for tok, pr in enumerate(row):
                if pr > 0:
                    nxt[prefix + (tok,)] = probs[prefix] * pr
        probs = nxt
    return probs


def _chi2_pvalue(samples, exact):
    keys = list(exact)
    expected = np.array([exact[k] for k in keys]) * len(samples)
    counts = pd.Series([tuple(s) for s in samples.tolist()]).value_counts()
    observed = np.array([counts.get(k, 0) for k in keys])
    if observed.sum() < len(samples):
        return 0.0  # some sequence has zero target probability: certainly not the target distribution
    big = expected >= 5  # pool sparse cells so the chi-square approximation holds
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


SIGNIFICANCE = 1e-3


@pytest.mark.parametrize("warp", [dict(temperature=0.9), dict(temperature=1.3, top_k=5), dict(temperature=0.7, top_p=0.8)])
def test_sampled_sd_matches_target_distribution(small_vocab_pair, warp):
    """Chi-square goodness of fit of SD's first 3 tokens (20,000 draws) to the exact target distribution."""
    target, draft = small_vocab_pair
    sampling = SamplingConfig(**warp)
    exact = _exact_joint(target, sampling, 8)
    samples = _first_tokens_sd(target, draft, RejectionSampling(), 20_000, **warp)
    assert _chi2_pvalue(samples, exact) > SIGNIFICANCE
    # and the draft is not simply the target: its own distribution is far from the target's
    samples_q = _first_tokens_sd(draft, draft, RejectionSampling(), 5_000, **warp)
    assert _chi2_pvalue(samples_q, exact) < SIGNIFICANCE


def test_sampled_sd_agrees_with_plain_target_sampling(small_vocab_pair):
    """Two-sample test against target.generate(do_sample=True) draws, as a user would check it."""
    target, draft = small_vocab_pair
    torch.manual_seed(0)
    plain = target.generate(torch.tensor([[1, 5, 3]] * 8000), attention_mask=torch.ones(8000, 3, dtype=torch.long),
                            do_sample=True, temperature=0.9, top_k=0, top_p=1.0, max_new_tokens=2,
                            eos_token_id=None, pad_token_id=0)[:, 3:].numpy()
    sd = _first_tokens_sd(target, draft, RejectionSampling(), 8000)[:, :2]
    table = np.zeros((2, 64))
    np.add.at(table[0], plain[:, 0] * 8 + plain[:, 1], 1)
    np.add.at(table[1], sd[:, 0] * 8 + sd[:, 1], 1)
    table = table[:, table.sum(0) >= 10]
    assert stats.chi2_contingency(table).pvalue > SIGNIFICANCE


class _NoCorrection(RejectionSampling):
    """Broken on purpose: resample rejected positions from p instead of norm(max(0, p - q))."""

    def __call__(self, tokens, p, q, u):
        accept, _ = super().__call__(tokens, p, q, u)
        return accept, p


def test_distribution_test_fails_without_the_correction_step(small_vocab_pair):
    target, draft = small_vocab_pair
    sampling = SamplingConfig(temperature=0.9)
    exact = _exact_joint(target, sampling, 8)
    samples = _first_tokens_sd(target, draft, _NoCorrection(), 20_000)
    assert _chi2_pvalue(samples, exact) < SIGNIFICANCE


def test_lenience_eps_one_is_lossless_and_smaller_eps_accepts_more(tiny_pair):
    target, draft = tiny_pair
    prompts = _prompts([6, 12, 3], seed=4)
    kw = dict(gamma=4, max_new_tokens=30, sampling=SamplingConfig(temperature=0.8, top_p=0.95), seed=9,
              eos_token_id=[])
    lossless = speculative_generate(target, draft, prompts, **kw)
    for kind in ("lin", "sq", "exp"):
        assert speculative_generate(target, draft, prompts, acceptance=RejectionSampling(kind, 1.0),
                                    **kw).sequences == lossless.sequences
    lossy = speculative_generate(target, draft, prompts, acceptance=RejectionSampling("lin", 0.1), **kw)
    assert lossy.metrics.alpha_tok > lossless.metrics.alpha_tok


def test_the_fast_nucleus_keeps_what_transformers_warper_keeps():
    """SamplingConfig.probs finds the top-p nucleus among the top candidates (sampling.nucleus_probs) and sorts only
    flat rows with transformers' warper: the same distribution, except where a token's mass above it lies within
    float rounding of top_p (the warper sums in float32 over the whole vocabulary)."""
    from distillspec.sampling import NUCLEUS_CANDIDATES, _warped_probs

    torch.manual_seed(0)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9)
    fast_rows = 0
    for scale in (0.5, 2.0, 6.0, 12.0):  # flat rows (the warper's path) to peaked ones (the candidates' path)
        logits = torch.randn(64, 4096) * scale
        probs = torch.softmax(logits.double() / 0.7, -1)
        fast_rows += int((probs.topk(NUCLEUS_CANDIDATES).values.sum(-1) >= 0.9).sum())
        got, want = sampling.probs(logits), _warped_probs(logits.clone(), sampling.warpers())
        differ = (got > 0) != (want > 0)
        for row, token in differ.nonzero().tolist():
            above = probs[row][probs[row] > probs[row, token]].sum().item()
            assert abs(above - 0.9) < 1e-5, (scale, row, token, above)
        same = ~differ.any(-1)
        assert same.float().mean() > 0.95 and torch.allclose(got[same], want[same], atol=1e-6)
    assert 0 < fast_rows < 4 * 64  # both paths ran


def test_skd_rule_keeps_only_target_top_k():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]])
    q = torch.full((2, 4), 0.25)
    accept, residual = TopKAcceptance(k=2)(torch.tensor([1, 2]), p, q, torch.zeros(2))
    assert accept.tolist() == [True, False]
    assert torch.equal(residual, p)


def test_records_cover_exactly_the_verified_positions(tiny_pair, tmp_path):
    target, draft = tiny_pair
    res = speculative_generate(target, draft, _prompts([7, 3, 15]), gamma=5, max_new_tokens=25,
                               sampling=SamplingConfig(temperature=0.7, top_p=0.95), eos_token_id=[])
    tokens, steps = res.tokens_df(), res.steps_df()
    per_step = tokens.groupby(["row", "step"]).agg(n=("pos", "size"), acc=("accepted", "sum"))
    merged = steps.set_index(["row", "step"]).join(per_step)
    assert (merged["n"] == np.minimum(merged["accepted"] + 1, 5)).all()
    assert (merged["acc"] == merged["accepted"]).all()
    assert tokens.groupby(["row", "step"])["accepted"].apply(lambda a: a.is_monotonic_decreasing).all()
    for col in ("p", "q", "p_t1", "q_t1", "expected_accept", "expected_accept_t1"):
        assert tokens[col].between(0, 1 + 1e-6).all(), col
    assert (tokens["target_entropy"] > 0).all() and (tokens["draft_entropy"] > 0).all()
    m = res.metrics
    assert m.alpha_tok == pytest.approx(steps["accepted"].sum() / steps["proposed"].sum())
    assert m.alpha_pos == pytest.approx(tokens["accepted"].mean())
    assert m.tau == pytest.approx(steps["emitted"].sum() / len(steps))
    assert m.full_block_rate == pytest.approx((steps["accepted"] == 5).mean())
    paths = res.save(tmp_path, prefix="run_")
    assert pd.read_parquet(paths["tokens"]).equals(tokens)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_metrics.json", "run_steps.parquet", "run_tokens.parquet"]


def test_leviathan_formulas():
    assert expected_tokens_per_step(0.0, 5) == 1.0
    assert expected_tokens_per_step(1.0, 5) == 6.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)
    assert ideal_speedup(0.5, 2, 0.25) == pytest.approx(1.75 / 1.5)


def test_bad_inputs_give_clear_errors(tiny_pair):
    target, draft = tiny_pair
    ok = [[1, 2, 3]]
    cases = [
        (dict(prompts=ok, gamma=0), "gamma=0 must be an int >= 1"),
        (dict(prompts=[]), "prompt list is empty"),
        (dict(prompts=[[1, 2], []]), "Prompt 1 is empty"),
        (dict(prompts=ok, max_new_tokens=0), "max_new_tokens=0 must be an int >= 1"),
        (dict(prompts=ok, sampling={"temperature": 0.7, "top_p": 1.5}), r"top_p=1.5 must be in \(0, 1\]"),
        (dict(prompts=ok, sampling={"top_p": 0.0}), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(prompts=ok, sampling={"temperature": 0.0}), "temperature=0.0 must be > 0 when sampling"),
        (dict(prompts=ok, sampling="nucleus"), "sampling='nucleus' is not understood"),
        (dict(prompts=[[1, 2], [1] * 2040]), "Prompt 1 has 2040 tokens.*context of 2048"),
        (dict(prompts=ok, acceptance="lin"), "acceptance='lin': pass None"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DistillSpecError, match=message):
            speculative_generate(target, draft, **kwargs)
    with pytest.raises(DistillSpecError, match="Unknown lenience 'cubic'"):
        RejectionSampling("cubic")
    with pytest.raises(DistillSpecError, match=r"eps=0.0 must be in \(0, 1\]"):
        RejectionSampling("lin", 0.0)
    small = tiny_model("llama", vocab_size=100)
    with pytest.raises(DistillSpecError, match="vocabulary size 49152 differs from the draft's 100"):
        speculative_generate(target, small, ok)


def test_incompatible_tokenizers_are_rejected(tiny_pair, tokenizer):
    from test_models import _word_tokenizer

    target, draft = tiny_pair
    with pytest.raises(DistillSpecError, match="Incompatible tokenizers"):
        speculative_generate(target, draft, [[1, 2]], target_tokenizer=tokenizer,
                             draft_tokenizer=_word_tokenizer(["<unk>", "<eos>", "x"]))


def test_real_teacher_with_derived_draft_is_exact(teacher, shared_data):
    from distillspec.data import load_prompts, render_prompts
    from distillspec.models import draft_from_teacher

    model, tok = teacher
    draft = draft_from_teacher(model, 10)
    prompts = render_prompts(tok, load_prompts("gsm8k", "test", 2, source=shared_data, seed=5))
    eos = tok.eos_token_id
    refs = _greedy_reference(model, prompts, 48, eos)
    res = speculative_generate(model, draft, prompts, gamma=5, max_new_tokens=48, eos_token_id=eos,
                               target_tokenizer=tok, draft_tokenizer=tok)
    assert res.sequences == refs
    assert 0 < res.metrics.alpha_tok < 1


def test_without_bonus_tokens_greedy_stays_exact(tiny_pair, greedy_case):
    """bonus=False (SKD rollouts): a full block ends on the last draft token; greedy output is unchanged."""
    target, draft = tiny_pair
    prompts, eos, refs = greedy_case
    res = speculative_generate(target, draft, prompts, gamma=3, max_new_tokens=40, eos_token_id=eos, bonus=False)
    assert res.sequences == refs
    same = speculative_generate(target, target, _prompts([4, 9]), gamma=3, max_new_tokens=12, eos_token_id=[],
                                bonus=False)
    assert (same.steps_df()["emitted"] == 3).all()


def _reduced(draft, keep, eos=0):
    import copy

    from distillspec.models import reduce_draft_vocab

    return reduce_draft_vocab(copy.deepcopy(draft), keep, eos_token_id=eos)


def test_reduced_vocabulary_draft_stays_exact_in_greedy(tiny_pair, greedy_case):
    """A draft that scores only some token ids (its head cut to those rows) still gives the target's own greedy
    output; it accepts fewer tokens than the full draft, but not none."""
    target, draft = tiny_pair
    prompts, eos, refs = greedy_case
    full = speculative_generate(target, draft, prompts, gamma=4, max_new_tokens=40, eos_token_id=eos)
    keep = sorted({t for seq in full.sequences[1:] for t in seq[::2]} | set(range(0, 49152, 7)) | {eos})
    small = _reduced(draft, keep, eos)
    assert small.get_output_embeddings().weight.shape[0] == len(keep) < 49152 / 5
    res = speculative_generate(target, small, prompts, gamma=4, max_new_tokens=40, eos_token_id=eos)
    assert res.sequences == refs
    assert 0 < res.metrics.accepted
    assert set(res.tokens_df()["token"]) <= set(keep)  # every drafted token is a kept id


@pytest.mark.parametrize("warp", [dict(temperature=0.9), dict(temperature=0.7, top_p=0.8)])
def test_reduced_vocabulary_draft_keeps_the_target_distribution(small_vocab_pair, warp):
    """q is 0 outside the kept ids; the residual max(0, p - q) covers them, so SD still samples from p."""
    target, draft = small_vocab_pair
    exact = _exact_joint(target, SamplingConfig(**warp), 8)
    samples = _first_tokens_sd(target, _reduced(draft, [0, 2, 3, 5]), RejectionSampling(), 20_000, **warp)
    assert _chi2_pvalue(samples, exact) > SIGNIFICANCE
    assert set(np.unique(samples)) - {0, 2, 3, 5}  # ids the draft cannot propose still come out (corrections)


def test_reduced_vocabulary_bad_input(small_vocab_pair):
    _, draft = small_vocab_pair
    with pytest.raises(DistillSpecError, match=r"leaves out the EOS token id\(s\) \[7\]"):
        _reduced(draft, [0, 1, 2], eos=7)
    with pytest.raises(DistillSpecError, match=r"ids outside \[0, 8\)"):
        _reduced(draft, [0, 1, 9])
    with pytest.raises(DistillSpecError, match="vocabulary is empty"):
        _reduced(draft, [])
    small = _reduced(draft, [0, 1, 2])
    small.draft_vocab_ids = torch.tensor([0, 1, 9])  # a map that points past the target's ids
    target, _ = small_vocab_pair
    with pytest.raises(DistillSpecError, match="do not share this id map"):
        speculative_generate(target, small, [[1, 2]], gamma=2, max_new_tokens=2)


def test_a_saved_reduced_draft_loads_with_its_map_and_is_refused_by_export(tiny_pair, greedy_case, tmp_path, tokenizer):
    from distillspec.export import export_draft
    from distillspec.models import load_model, save_pretrained_atomic

    target, draft = tiny_pair
    prompts, eos, refs = greedy_case
    small = _reduced(draft, sorted(set(range(0, 49152, 3)) | {eos}), eos)
    save_pretrained_atomic(small, tokenizer, tmp_path / "student")
    loaded, _ = load_model(tmp_path / "student")
    assert torch.equal(loaded.draft_vocab_ids, small.draft_vocab_ids)
    assert torch.equal(loaded.get_output_embeddings().weight, small.get_output_embeddings().weight)
    a = speculative_generate(target, small, prompts, gamma=3, max_new_tokens=40, eos_token_id=eos)
    b = speculative_generate(target, loaded, prompts, gamma=3, max_new_tokens=40, eos_token_id=eos)
    assert a.sequences == b.sequences == refs and a.metrics.accepted == b.metrics.accepted
    with pytest.raises(DistillSpecError, match="reduced-vocabulary draft"):
        export_draft(tmp_path / "student", tmp_path / "out", target="tiny-qwen3")


def test_draft_vocabulary_comes_from_teacher_text_and_keeps_special_tokens(tokenizer):
    from distillspec.draft_vocab import choose_draft_vocab, teacher_token_counts
    from distillspec.models import load_model

    teacher, _ = load_model("tiny-qwen3")
    prompts = [tokenizer.encode("What is 2 + 3?"), tokenizer.encode("Say hello.")]
    counts = teacher_token_counts(teacher, tokenizer, prompts, sampling=SamplingConfig(temperature=1.0),
                                  max_new_tokens=12, seed=3)
    assert 0 < sum(counts.values()) <= 24
    special = set(tokenizer.all_special_ids) | {tokenizer.eos_token_id}
    keep = choose_draft_vocab(counts, tokenizer, len(special) + 5)
    assert special <= set(keep) and len(keep) == len(special) + 5
    kept = set(keep) - special
    dropped = set(counts) - special - kept
    assert all(counts[i] > 0 for i in kept)  # every kept id is one the teacher wrote (it wrote more than 5)
    assert min(counts[i] for i in kept) >= max((counts[i] for i in dropped), default=0)  # the most frequent ones
    with pytest.raises(DistillSpecError, match="cannot hold the"):
        choose_draft_vocab(counts, tokenizer, 1)


@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.99])
def test_stopping_an_unsure_draft_early_stays_exact(tiny_pair, greedy_case, threshold):
    """draft_confidence: a row stops after a draft its own probability puts below the threshold; blocks get
    shorter (fewer drafts proposed and fewer draft forwards), the text stays the target's."""
    target, draft = tiny_pair
    prompts, eos, refs = greedy_case
    full = speculative_generate(target, draft, prompts, gamma=6, max_new_tokens=40, eos_token_id=eos)
    res = speculative_generate(target, draft, prompts, gamma=6, max_new_tokens=40, eos_token_id=eos,
                               draft_confidence=threshold)
    assert res.sequences == refs
    steps = res.steps_df()
    assert (steps["accepted"] <= steps["proposed"]).all() and (steps["proposed"] <= 6).all()
    assert res.metrics.proposed < full.metrics.proposed
    if threshold == 0.99:
        assert res.metrics.draft_forwards < full.metrics.draft_forwards  # whole blocks ended early
    tokens = res.tokens_df()
    assert len(tokens) == res.metrics.verified and tokens["accepted"].sum() == res.metrics.accepted


def test_sampled_sd_with_early_stops_keeps_the_target_distribution(small_vocab_pair):
    target, draft = small_vocab_pair
    warp = dict(temperature=0.9)
    exact = _exact_joint(target, SamplingConfig(**warp), 8)
    res = speculative_generate(target, draft, [[1, 5, 3]] * 20_000, gamma=2, max_new_tokens=3, eos_token_id=[],
                               sampling=SamplingConfig(**warp), record=False, draft_confidence=0.5)
    assert res.metrics.proposed < 2 * res.metrics.target_calls  # some blocks stopped after one draft
    assert _chi2_pvalue(np.array(res.sequences), exact) > SIGNIFICANCE


def test_draft_confidence_bad_values_are_refused(tiny_pair):
    target, draft = tiny_pair
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(DistillSpecError, match="draft_confidence=.* must be in \\(0, 1\\)"):
            speculative_generate(target, draft, [[5, 6]], gamma=2, max_new_tokens=3, draft_confidence=bad)
    with pytest.raises(DistillSpecError, match="draft_confidence needs bonus=True"):
        speculative_generate(target, draft, [[5, 6]], gamma=2, max_new_tokens=3, draft_confidence=0.5, bonus=False)
