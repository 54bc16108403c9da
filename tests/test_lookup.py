"""Prompt lookup (lookup.py) in the batched decoder: the proposals transformers' prompt lookup makes, token-identical
greedy output, the target's distribution when sampling, and rows that propose nothing."""

import numpy as np
import pytest
import torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

from conftest import REPO
from distillspec import DistillSpecError
from distillspec.lookup import SOURCES, Hybrid, PromptLookup, continuation
from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate
from test_eagle import echo  # noqa: F401 (a fixture: a one-layer target and a head that nearly recomputes it)
from test_specdec import SIGNIFICANCE, _chi2_pvalue, _exact_joint, _first_tokens_sd, _greedy_reference


@pytest.mark.parametrize("max_ngram,length", [(1, 3), (2, 10), (3, 5)])
def test_proposals_are_those_of_transformers_prompt_lookup(max_ngram, length):
    rng = np.random.default_rng(0)
    hf = PromptLookupCandidateGenerator(eos_token_id=torch.tensor([7]), num_output_tokens=length,
                                        max_matching_ngram_size=max_ngram, max_length=10_000)
    matched = 0
    for _ in range(300):
        text = rng.integers(0, 12, size=int(rng.integers(2, 40)))
        ids, _ = hf.get_candidates(torch.tensor(text)[None])
        theirs = ids[0, len(text):].tolist()
        assert continuation(text, max_ngram, length, {7}) == theirs, text
        matched += bool(theirs)
    assert 50 < matched < 300  # both kinds of text occur


def _repetitive_prompts(n_rows=6, seed=0):
    """Prompts that repeat a chunk (so lookup finds matches) and one that never repeats a token (no match)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 49000, (int(k),), generator=gen).tolist() * 3 for k in range(2, 2 + n_rows - 1)]
    return prompts + [list(range(100, 107))]


def test_the_most_recent_occurrence_is_copied_when_asked():
    """recent=True: the continuation of the latest earlier occurrence of the longest suffix that recurs (brute force)."""
    rng = np.random.default_rng(1)
    differs = 0
    for _ in range(300):
        text = rng.integers(0, 8, size=int(rng.integers(2, 40)))
        expected = []
        for n in range(min(3, len(text) - 1), 0, -1):
            starts = [s for s in range(len(text) - n) if (text[s: s + n] == text[-n:]).all()]
            if starts:
                found = text[starts[-1] + n: starts[-1] + n + 4].tolist()
                expected = found[: found.index(7)] if 7 in found else found
                break
        assert continuation(text, 3, 4, {7}, recent=True) == expected, text
        differs += expected != continuation(text, 3, 4, {7})
    assert differs > 20


@pytest.mark.parametrize("gamma,recent", [(1, False), (4, False), (10, False), (4, True)])
def test_greedy_lookup_is_token_identical_to_target_generate(tiny_pair, gamma, recent):
    target, _ = tiny_pair
    prompts = _repetitive_prompts()
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][9]
    refs = _greedy_reference(target, prompts, 40, eos)
    res = speculative_generate(target, PromptLookup(max_ngram=2, recent=recent), prompts, gamma=gamma,
                               max_new_tokens=40, eos_token_id=eos)
    assert res.sequences == refs
    m = res.metrics
    assert m.draft_forwards == 0 and m.proposed > 0 and 0 < m.drafted_share < 1  # some steps had no match
    assert m.max_new_per_forward_target <= gamma + 1 and m.new_tokens == sum(len(r) for r in refs)
    steps, tokens = res.steps_df(), res.tokens_df()
    assert (steps["proposed"] <= gamma).all() and len(tokens) == m.verified
    assert tokens["accepted"].sum() == m.accepted and (tokens["q"] == 1).all() and (tokens["draft_entropy"] < 1e-6).all()


@pytest.mark.parametrize("warp", [dict(temperature=0.9), dict(temperature=0.7, top_p=0.8)])
def test_sampled_lookup_keeps_the_target_distribution(small_vocab_pair, warp):
    """Chi-square of the first 3 tokens after a prompt whose suffix recurs (lookup proposes at every step)."""
    target, _ = small_vocab_pair
    prompt = (1, 5, 3, 1, 5)
    exact = _exact_joint(target, SamplingConfig(**warp), 8, prompt=prompt)
    samples = _first_tokens_sd(target, PromptLookup(2), None, 20_000, prompt=prompt, gamma=3, **warp)
    assert _chi2_pvalue(samples, exact) > SIGNIFICANCE


def test_lookup_needs_the_bonus_token_and_a_valid_ngram(tiny_pair):
    target, _ = tiny_pair
    with pytest.raises(DistillSpecError, match="needs bonus=True"):
        speculative_generate(target, PromptLookup(), [[5, 6, 5]], gamma=2, max_new_tokens=3, bonus=False)
    with pytest.raises(DistillSpecError, match="max_ngram=0 must be an int >= 1"):
        PromptLookup(max_ngram=0)


def _by_source(res) -> dict[int, float]:
    """alpha_pos of each source's steps (accepted / verified positions)."""
    steps = res.steps_df()
    verified = np.minimum(steps["accepted"] + 1, steps["proposed"])
    return {int(s): steps["accepted"][steps["source"] == s].sum() / verified[steps["source"] == s].sum()
            for s in steps["source"].unique()}


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_hybrid_is_token_identical_and_its_draft_stays_current(tiny_pair, gamma):
    """With the target itself as the trained draft every token it proposes is accepted, so a cache that missed the
    text of a lookup step would show as a rejection; the output is the target's own greedy text."""
    target, draft = tiny_pair
    prompts = _repetitive_prompts()
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][9]
    refs = _greedy_reference(target, prompts, 40, eos)
    for second in (target, draft):
        res = speculative_generate(target, Hybrid(second, PromptLookup(2)), prompts, gamma=gamma,
                                   max_new_tokens=40, eos_token_id=eos)
        assert res.sequences == refs
        alpha = _by_source(res)
        assert set(alpha) == {SOURCES["draft"], SOURCES["lookup"]}  # both proposed in this run
        if second is target:
            assert alpha[SOURCES["draft"]] == 1.0
        assert res.metrics.drafted_share == 1.0 and res.metrics.draft_forwards > 0


@pytest.mark.parametrize("blocks", [(2, 0), (0, 3), (1, 4)])
def test_a_hybrids_blocks_cap_each_side_and_stay_exact(tiny_pair, blocks):
    """lookup_block / draft_block cap each side's block (0: that side never drafts: rows without a match decode
    plainly, or the trained draft drafts every row)."""
    target, draft = tiny_pair
    prompts = _repetitive_prompts()
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][9]
    refs = _greedy_reference(target, prompts, 40, eos)
    res = speculative_generate(target, Hybrid(draft, PromptLookup(2), *blocks), prompts, gamma=4, max_new_tokens=40,
                               eos_token_id=eos)
    assert res.sequences == refs
    steps = res.steps_df()
    for source, cap in zip((SOURCES["lookup"], SOURCES["draft"]), blocks):
        assert (steps.loc[steps["source"] == source, "proposed"] <= cap).all()
    assert (res.metrics.draft_forwards == 0) == (blocks[1] == 0)
    calls = []
    hook = draft.register_forward_hook(lambda *_: calls.append(1))
    try:
        speculative_generate(target, Hybrid(draft, PromptLookup(2), *blocks), prompts, gamma=4, max_new_tokens=40,
                             eos_token_id=eos)
    finally:
        hook.remove()
    assert (calls == []) == (blocks[1] == 0)  # a draft that never drafts is not even prefilled
    with pytest.raises(DistillSpecError, match="draft_block=-1 must be an int >= 0"):
        Hybrid(draft, PromptLookup(2), draft_block=-1)


def test_a_hybrid_with_a_feature_head_stays_exact_and_keeps_the_heads_acceptance(echo):
    target, head, prompts, eos, refs = echo
    prompts = [p * 3 for p in prompts]  # repeated chunks: lookup matches in some steps
    refs = _greedy_reference(target, prompts, 40, eos)
    alone = speculative_generate(target, head, prompts, gamma=4, max_new_tokens=40, eos_token_id=eos)
    res = speculative_generate(target, Hybrid(head, PromptLookup(2)), prompts, gamma=4, max_new_tokens=40,
                               eos_token_id=eos)
    assert res.sequences == alone.sequences == refs
    alpha = _by_source(res)
    assert set(alpha) == {SOURCES["draft"], SOURCES["lookup"]}
    assert alpha[SOURCES["draft"]] > alone.metrics.alpha_pos - 0.1  # its features stayed in line with the text


def test_sampled_hybrid_keeps_the_target_distribution(small_vocab_pair):
    target, draft = small_vocab_pair
    warp = dict(temperature=0.9)
    prompt = (1, 5, 3, 1, 2)  # no match at the first step (the draft proposes), matches later in some rows
    exact = _exact_joint(target, SamplingConfig(**warp), 8, prompt=prompt)
    samples = _first_tokens_sd(target, Hybrid(draft, PromptLookup(1)), None, 20_000, prompt=prompt, gamma=2, **warp)
    assert _chi2_pvalue(samples, exact) > SIGNIFICANCE


def _tiny_study_with(tiny_run, tmp_path, run: dict | None = None, **keys):
    """The shared tiny study with one more run and other keys (its preset, a copy of its run directory, and the
    notebooks the pipeline would execute there)."""
    import shutil

    import yaml

    from distillspec.study.pipeline import plan
    from distillspec.study.preset import StudyConfig

    config, run_dir, _ = tiny_run
    settings = yaml.safe_load(config.read_text())
    settings.update(extra_runs=[*settings["extra_runs"], *([run] if run else [])], **keys)
    preset = tmp_path / "study.yaml"
    preset.write_text(yaml.safe_dump(settings))
    cfg = StudyConfig.from_yaml(preset)
    shutil.copytree(run_dir, tmp_path / "run")
    return cfg, tmp_path / "run", [step.executed for step in plan(cfg, preset, tmp_path / "run")]


def test_a_study_evaluates_and_times_a_lookup_run_without_training_it(tiny_run, tmp_path, monkeypatch):
    """`draft_kind: lookup` in a preset's runs: no training step, the evaluation stage decodes and times it like any
    draft (no parameters, no draft cost), and `train` says there is nothing to train. Its speed pilot (acceptance
    and the never-slower trial) reads speed_copy_pilot_prompts training prompts, not speed_pilot_prompts."""
    import json

    from distillspec.atomic import read_parquet
    from distillspec.study import evaluation
    from distillspec.study.evaluation import evaluate_drafts
    from distillspec.study.rundir import RunPaths
    from distillspec.study.train import train_draft

    cfg, run, outputs = _tiny_study_with(tiny_run, tmp_path, {"name": "lookup", "draft_kind": "lookup"},
                                         speed_copy_pilot_prompts=3)
    assert cfg.speed_pilot_prompts == 2
    assert "02_distill_eagle.ipynb" in outputs and "02_distill_lookup.ipynb" not in outputs
    with pytest.raises(DistillSpecError, match="nothing to train"):
        train_draft(cfg, run, "lookup")
    pilots, trials = [], []
    decode, check = evaluation.speculative_generate, evaluation.never_slower_gamma

    def pilot_spy(target, draft, prompts, **kw):
        if kw.get("record") is False:
            pilots.append(len(prompts))
        return decode(target, draft, prompts, **kw)

    def trial_spy(target, draft, tok, costs, acceptance, trial_prompts, **kw):
        trials.append(len(trial_prompts))
        return check(target, draft, tok, costs, acceptance, trial_prompts, **kw)

    monkeypatch.setattr(evaluation, "speculative_generate", pilot_spy)
    monkeypatch.setattr(evaluation, "never_slower_gamma", trial_spy)
    evaluate_drafts(cfg, run, ["lookup"])
    assert pilots and set(pilots) == {3}  # one pilot per sampling
    assert trials == [max(3, s.get("batch_size", 1)) for s in cfg.speed]
    paths = RunPaths(run)
    row = json.loads(paths.speed_row("lookup").read_text())
    assert row["draft_params"] == 0 and np.isnan(row["own_sample_expected_accept"])
    assert all(t["costs"]["draft_s"] == 0.0 for t in row["timed"])
    assert all("pilot_blocks" in t for t in row["timed"])  # its gamma chosen by acceptance per depth and match lengths
    steps, tokens = read_parquet(paths.steps("lookup")), read_parquet(paths.tokens("lookup"))
    assert (steps["proposed"] <= cfg.gamma).all() and len(tokens) > 0 and (tokens["q"] == 1).all()
    assert read_parquet(paths.timing("lookup"))["setting"].nunique() == len(cfg.speed)


def test_a_copy_pilot_larger_than_the_training_prompts_is_refused_before_decoding(tiny_run, tmp_path, monkeypatch):
    """speed_copy_pilot_prompts beyond the run's training prompts: a clear error naming the keys, before any model
    is loaded (a slice would quietly read fewer prompts than the preset says)."""
    from distillspec.study import evaluation
    from distillspec.study.evaluation import evaluate_drafts

    cfg, run, _ = _tiny_study_with(tiny_run, tmp_path, {"name": "lookup", "draft_kind": "lookup"},
                                   speed_copy_pilot_prompts=100_000)
    monkeypatch.setattr(evaluation, "load_target", lambda *a, **k: pytest.fail("loaded the target first"))
    with pytest.raises(DistillSpecError, match="speed pilot of draft 'lookup' reads 100000 training prompts"):
        evaluate_drafts(cfg, run, ["lookup"])


def test_the_lookup_and_hybrid_kinds_load_cut_and_refuse_export(tiny_pair, tokenizer, tmp_path):
    from distillspec.config import Config
    from distillspec.drafts import kind_named, kind_of, load_draft

    target, draft = tiny_pair
    draft.save_pretrained(tmp_path / "draft")
    tokenizer.save_pretrained(tmp_path / "draft")
    hybrid = load_draft(Config(teacher="tiny-qwen3", draft_kind="hybrid"), target, tokenizer,
                        tmp_path / "draft")
    assert isinstance(hybrid, Hybrid) and kind_of(hybrid).name == "hybrid" and kind_of(hybrid.draft).name == "model"
    cut = kind_of(hybrid).cut_vocab(hybrid, list(range(300)), tokenizer.eos_token_id)
    assert isinstance(cut, Hybrid) and cut.draft.draft_vocab_ids.numel() >= 300 and cut.lookup == hybrid.lookup
    lookup = load_draft(Config(teacher="tiny-qwen3", draft_kind="lookup"), target, tokenizer)
    assert isinstance(lookup, PromptLookup) and kind_of(lookup).name == "lookup"
    assert kind_named("lookup").export_refusal and kind_named("hybrid").export_refusal


@pytest.mark.parametrize("run,message", [
    ({"name": "hybrid", "draft_kind": "hybrid"}, "set hybrid_of to the run"),
    ({"name": "hybrid", "draft_kind": "hybrid", "hybrid_of": "nope"}, "got 'nope'"),
    ({"name": "hybrid", "draft_kind": "hybrid", "hybrid_of": "hybrid"}, "set hybrid_of to the run"),
    ({"name": "copy", "draft_kind": "model", "hybrid_of": "fkl"}, "draft_kind is 'model'"),
    ({"name": "copy", "draft_kind": "lookup", "lookup_ngram": 0}, "lookup_ngram=0"),
    ({"name": "copy", "draft_kind": "lookup", "lookup_recent": "yes"}, "lookup_recent='yes' must be true or false"),
])
def test_a_study_refuses_a_hybrid_run_without_a_trained_run_to_fall_back_on(tmp_path, run, message):
    import yaml

    from distillspec.study.preset import StudyConfig

    settings = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    settings.update(data_source=None, extra_runs=[*settings["extra_runs"], {"name": "lookup", "draft_kind": "lookup"},
                                                  run])
    (tmp_path / "hybrid.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(DistillSpecError, match=message):
        StudyConfig.from_yaml(tmp_path / "hybrid.yaml")
    lookup_fallback = {**settings, "extra_runs": [*settings["extra_runs"][:-1],
                                                  {"name": "hybrid", "draft_kind": "hybrid", "hybrid_of": "lookup"}]}
    (tmp_path / "on_lookup.yaml").write_text(yaml.safe_dump(lookup_fallback))
    with pytest.raises(DistillSpecError, match="trains no draft to fall back on"):
        StudyConfig.from_yaml(tmp_path / "on_lookup.yaml")


def test_a_study_evaluates_a_hybrid_run_on_its_trained_draft_and_analyses_it_by_source(tiny_run, tmp_path):
    """`draft_kind: hybrid` with `hybrid_of: fkl`: no training step; the evaluation loads the fkl run's draft beside
    prompt lookup (n-grams up to lookup_ngram), its step records say which source proposed each block, and the
    analysis reports acceptance per source (results.md) and per source and entropy bin."""
    import json

    import pandas as pd

    from distillspec.atomic import read_parquet
    from distillspec.study.analysis import analyze
    from distillspec.study.evaluation import decoding_draft, evaluate_drafts
    from distillspec.study.rundir import RunPaths
    from distillspec.pair import load_target

    cfg, run, outputs = _tiny_study_with(tiny_run, tmp_path, {"name": "hybrid_fkl", "draft_kind": "hybrid",
                                                              "hybrid_of": "fkl", "lookup_ngram": 2})
    assert "02_distill_fkl.ipynb" in outputs and "02_distill_hybrid_fkl.ipynb" not in outputs
    evaluate_drafts(cfg, run, ["hybrid_fkl"])
    paths = RunPaths(run)
    row = json.loads(paths.speed_row("hybrid_fkl").read_text())
    assert row["draft_params"] > 0 and all(t["costs"]["draft_s"] > 0 for t in row["timed"])  # the fkl draft runs
    for t in row["timed"]:  # the cost model chose a block for each side from the pilot's acceptance per source
        assert 0 <= t["pilot_sources"]["lookup_share"] <= 1 and t["gamma"] in (0, max(t["blocks"]))
    steps = read_parquet(paths.steps("hybrid_fkl"))
    assert set(steps["source"]) == {0, 1}  # both sources proposed (tiny text repeats itself, so lookup matches)
    target, tok = load_target(cfg.for_decoding())
    hybrid = decoding_draft(cfg, run, target, tok, "hybrid_fkl")
    assert hybrid.lookup.max_ngram == 2 and hybrid.draft.config.num_hidden_layers == 1
    analysis = analyze(cfg, run)
    assert "### Acceptance by source (hybrid drafts)" in analysis.results_md
    assert analysis.speed.set_index("draft").loc[["hybrid_fkl"], "predicted_speedup"].notna().all()
    assert "| hybrid_fkl | lookup |" in analysis.results_md and "| hybrid_fkl | draft |" in analysis.results_md
    by_source = pd.read_csv(paths.entropy_bins_by_source)
    assert set(by_source["draft"]) <= {"hybrid_fkl (lookup)", "hybrid_fkl (draft)"} and len(by_source) > 0
    assert by_source["n"].sum() <= len(read_parquet(paths.tokens("hybrid_fkl")))
    # the fkl draft saved again (its marker file newer) makes the hybrid's records stale: it is evaluated again
    from distillspec.drafts import saved_draft
    from distillspec.study.evaluation import _evaluated

    saved_draft(paths.student("fkl")).touch()

    assert not _evaluated(paths, "hybrid_fkl", paths.student("fkl"))


def test_a_seeded_hybrid_falls_back_on_the_same_seeds_draft(tmp_path):
    import yaml

    from distillspec.study.preset import StudyConfig

    settings = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    settings.update(data_source=None, seeds=[0, 1],
                    extra_runs=[*settings["extra_runs"], {"name": "hybrid", "draft_kind": "hybrid", "hybrid_of": "fkl"}])
    (tmp_path / "seeded.yaml").write_text(yaml.safe_dump(settings))
    cfg = StudyConfig.from_yaml(tmp_path / "seeded.yaml")
    assert [cfg.fallback_run(f"hybrid_s{s}") for s in (0, 1)] == ["fkl_s0", "fkl_s1"]
    assert cfg.fallback_run("fkl_s0") is None and not cfg.trains("hybrid_s0") and cfg.trains("eagle_s1")


def test_a_study_times_transformers_prompt_lookup_as_its_reference_row(tiny_run, tmp_path):
    """reference_lookup: the evaluation times transformers' own prompt lookup at each batch-1 setting against the
    target alone on the drafts' timed prompts (its settings the fastest of the grid on training prompts), the
    analysis puts it in the timing table, and it is published with the drafts' records."""
    import json

    from distillspec.atomic import read_parquet
    from distillspec.speed import LOOKUP_GRID
    from distillspec.study.analysis import analyze
    from distillspec.study.evaluation import evaluate_drafts
    from distillspec.study.manifest import folder_damage
    from distillspec.study.pipeline import publish
    from distillspec.study.rundir import REFERENCE, RunPaths

    cfg, run, outputs = _tiny_study_with(tiny_run, tmp_path, reference_lookup=True)
    evaluate_drafts(cfg, run)  # the drafts were evaluated before (the copied run): only the reference is timed
    paths = RunPaths(run)
    row = json.loads(paths.speed_row(REFERENCE).read_text())
    assert [t["setting"] for t in row["timed"]] == ["greedy, batch 1"]  # batch 2 is n/a for assisted generation
    chosen = row["timed"][0]
    grid = chosen["pilot_tokens_per_s"]
    assert len(grid) == len(LOOKUP_GRID)
    assert grid[f"{chosen['prompt_lookup_num_tokens']},{chosen['max_matching_ngram_size']}"] == max(grid.values())
    timing = read_parquet(paths.timing(REFERENCE))
    assert len(timing) == cfg.speed_prompts and timing["identical"].all()  # greedy: the target's own text
    assert (timing["gamma"] == chosen["prompt_lookup_num_tokens"]).all()
    analysis = analyze(cfg, run)
    assert f"| {REFERENCE} | greedy, batch 1 | {chosen['prompt_lookup_num_tokens']} | – | – | – | – |" in analysis.results_md
    assert "transformers' own prompt lookup" in analysis.results_md and "nan" not in analysis.results_md
    speed = analysis.speed.set_index("draft")
    assert speed.loc[REFERENCE, "speedup"] > 0 and speed.loc[REFERENCE, "setting"] == "greedy, batch 1"
    assert np.isnan(speed.loc[REFERENCE, "alpha_pos"])  # transformers does not say what it accepted
    # every draft timed on the same prompts is paired with it, prompt by prompt: its speedup over the reference's
    from distillspec.speed import SPEED_COLUMNS, speed_ratio

    def speedup(name):
        frame = read_parquet(paths.timing(name))
        return speed_ratio(*(frame.loc[frame["setting"] == "greedy, batch 1", k].sum() for k in SPEED_COLUMNS))
    paired = analysis.speed[analysis.speed["setting"] == "greedy, batch 1"].set_index("draft")["vs_reference"]
    assert np.isnan(paired[REFERENCE]) and paired.drop(REFERENCE).notna().all()
    assert paired["fkl"] == pytest.approx(speedup("fkl") / speedup(REFERENCE))
    assert f"Each draft against {REFERENCE} on the same prompts" in analysis.results_md
    batch_2 = analysis.speed[analysis.speed["setting"].str.endswith("batch 2")]
    assert len(batch_2) and batch_2["vs_reference"].isna().all()  # the reference has no batch 2
    published = tmp_path / "pub"
    publish(cfg, run, published)
    assert (published / cfg.name / "records" / paths.timing(REFERENCE).name).is_file()
    assert not folder_damage(published / cfg.name / "records", paths, REFERENCE)
    before = paths.timing(REFERENCE).stat().st_mtime
    evaluate_drafts(cfg, run)  # done: not timed again
    assert paths.timing(REFERENCE).stat().st_mtime == before
    # another run of the same study imports it with the drafts' records (--results-from)
    import shutil

    from distillspec.study.handoff import import_records
    from distillspec.study.rundir import timed_names

    shutil.copytree(run, tmp_path / "again")
    for path in (paths.timing(REFERENCE), paths.speed_row(REFERENCE), paths.manifest(REFERENCE)):
        (tmp_path / "again" / path.relative_to(run)).unlink()
    imported = import_records(cfg, tmp_path / "again", published / cfg.name / "records", timed_names(cfg))
    assert REFERENCE in imported and RunPaths(tmp_path / "again").timing(REFERENCE).is_file()


def test_a_pilot_that_mixes_sources_is_read_per_source():
    import json

    from distillspec.speed import SourceAcceptance, StepCosts

    mixed = SourceAcceptance.from_steps([3, 0, 4, 4, 2], [3, 0, 1, 4, 0], [True, True, False, False, True])
    assert mixed.lookup_share == pytest.approx(0.6)
    assert mixed.lookup.offered == pytest.approx({3: 1 / 3, 0: 1 / 3, 2: 1 / 3}) and mixed.draft.offered == {4: 1.0}
    assert mixed.draft.accept[:2] == (1.0, 0.5)  # both draft steps accepted depth 1, one of them depth 2
    assert SourceAcceptance.from_dict(json.loads(json.dumps(mixed.as_dict()))) == mixed
    never = SourceAcceptance.from_steps([4, 4], [1, 2], [False, False])  # lookup never matched in the pilot
    assert never.lookup_share == 0 and never.lookup.expected_tokens(4) == 1.0
    costs = StepCosts({1: 1.0, 2: 1.05, 3: 1.1, 4: 1.15, 5: 1.2}, 0.05, 1, 100)
    assert costs.best_hybrid_blocks(never.lookup, never.draft, never.lookup_share)[1] >= 1  # the draft still pays
