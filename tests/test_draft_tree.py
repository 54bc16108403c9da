"""Draft trees in the decoder (draft_tree.py): tree attention scores every node as its own chain would, greedy tree
decoding is token-identical to the target's own, sampled tree decoding keeps the target's distribution."""

import numpy as np
import pytest
import torch

from distillspec import DistillSpecError
from distillspec.acceptance import RejectionSampling
from distillspec.draft_tree import TreeShape, ancestry, merge_candidates, parse_tree, walk_kept
from distillspec.lookup import Hybrid, PromptLookup
from distillspec.sampling import SamplingConfig
from distillspec.specdec import RaggedKV, speculative_generate
from test_eagle import echo  # noqa: F401 (a fixture: a one-layer target and a head that nearly recomputes it)
from test_lookup import _repetitive_prompts
from test_specdec import SIGNIFICANCE, _chi2_pvalue, _exact_joint, _first_tokens_sd, _greedy_reference, _prompts

WIDE = {(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 0, 0)}  # 8 nodes, depth 4
PAIR = {(0,), (1,)}  # the draft's first two choices at depth 1


def test_a_static_tree_orders_its_nodes_and_refuses_a_broken_shape():
    shape = TreeShape.of(WIDE)
    assert shape.paths[:3] == ((0,), (1,), (2,)) and shape.depth == 4
    assert [shape.paths[p] if p >= 0 else () for p in shape.parents] == [path[:-1] for path in shape.paths]
    with pytest.raises(DistillSpecError, match=r"not closed under prefixes: \(1, 0\) has no parent \(1,\)"):
        TreeShape.of({(0,), (1, 0)})
    with pytest.raises(DistillSpecError, match="non-empty set of rank paths"):
        TreeShape.of({(0,), (-1,)})
    assert parse_tree("0|1|0.0") == {(0,), (1,), (0, 0)}
    with pytest.raises(DistillSpecError, match=r"\(1, 0\) has no parent"):
        parse_tree("0|1.0")


def test_candidates_merge_into_a_trie_within_its_budget():
    tokens, parents = merge_candidates([[5, 6, 7], [5, 8], [9, 6]], nodes=5)
    assert tokens == [5, 6, 7, 8, 9] and parents == [-1, 0, 1, 0, -1]
    assert merge_candidates([[5, 6, 7], [5, 8], [9, 6]], nodes=4) == ([5, 6, 7, 8], [-1, 0, 1, 0])
    assert walk_kept(tokens, parents, [5, 8, 1]) == 2 and walk_kept(tokens, parents, [9, 6]) == 1
    attend, depth = ancestry(torch.tensor([parents]), torch.ones(1, 5, dtype=torch.bool))
    assert depth.tolist() == [[1, 2, 3, 2, 1]]
    assert attend[0, 2].tolist() == [True, True, True, False, False]  # 7 sees 5, 6 and itself


def test_one_verification_scores_every_node_as_its_own_chain_would(tiny_pair):
    """fp32: the target's logits after each node of a tree verified in one pass (ragged rows, left padding) equal
    a plain forward over the prompt and that node's path; after keep_tree the cache continues the kept path."""
    from distillspec.draft_tree import verification_layout
    from distillspec.specdec import left_pad

    target, _ = tiny_pair
    prompts = _prompts((5, 9))
    tokens, parents = merge_candidates([[11, 12, 13], [11, 14], [15, 16]], nodes=6)
    n = len(tokens)
    kv = RaggedKV(target, target.config.vocab_size)
    ids, valid = left_pad(prompts, 0, "cpu")
    kv.forward(ids, valid, prefill=True)
    par = torch.tensor([parents, parents])
    node_valid = torch.tensor([[True] * n, [True] * (n - 1) + [False]])  # row 1 has one node fewer
    attend, offsets = verification_layout(par, node_valid)
    nodes = torch.tensor([tokens, tokens])
    last = torch.tensor([[7], [8]])
    logits = kv.forward(torch.cat([last, nodes], 1), torch.cat([torch.ones(2, 1, dtype=torch.bool), node_valid], 1),
                        tree=(attend, kv.n_real[:, None] + offsets))  # [2, n+1, V]
    for b, prompt in enumerate(prompts):
        for i in range(n + 1):
            if i and not node_valid[b, i - 1]:
                continue
            path, node = [], i - 1
            while node >= 0:
                path.insert(0, tokens[node])
                node = parents[node]
            plain = target(torch.tensor([prompt + [7 + b] + path])).logits[0, -1]
            torch.testing.assert_close(logits[b, i], plain, atol=1e-4, rtol=1e-4)
    kept = torch.zeros(2, n + 1, dtype=torch.bool)
    kept[:, [0, 1, 4]] = True  # the token before the tree, 11, then 14
    kv.keep_tree(kept)
    after = kv.forward(torch.tensor([[21], [21]]), torch.ones(2, 1, dtype=torch.bool))[:, -1]
    for b, prompt in enumerate(prompts):
        plain = target(torch.tensor([prompt + [7 + b, 11, 14, 21]])).logits[0, -1]
        torch.testing.assert_close(after[b], plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tree", [PAIR, WIDE, {(1,), (1, 0), (0,)}])
def test_greedy_tree_decoding_is_token_identical_to_target_generate(tiny_pair, tree):
    target, draft = tiny_pair
    prompts = _prompts()
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][7]
    refs = _greedy_reference(target, prompts, 40, eos)
    res = speculative_generate(target, draft, prompts, gamma=3, max_new_tokens=40, eos_token_id=eos, draft_tree=tree)
    assert res.sequences == refs
    steps, tokens = res.steps_df(), res.tokens_df()
    assert (steps["proposed"] == len(tree)).all()  # every node verified
    assert res.metrics.accepted == tokens["accepted"].sum() > 0
    assert res.metrics.max_new_per_forward_target == len(tree) + 1  # one pass per step


@pytest.mark.parametrize("tree,kept", [({(0,), (1,), (0, 0), (0, 1), (0, 0, 0)}, 3), ({(1,), (1, 0), (0,)}, 1)])
def test_a_draft_that_is_the_target_walks_its_first_choices(tiny_pair, tree, kept):
    """With the target as its own draft every first choice is the target's token: each step keeps the tree's
    first-choice path (then the bonus) unless the text ends first, so a draft cache out of line would show."""
    target, _ = tiny_pair
    prompts = _prompts()
    res = speculative_generate(target, target, prompts, gamma=3, max_new_tokens=40, eos_token_id=[], draft_tree=tree)
    assert res.sequences == _greedy_reference(target, prompts, 40, None)
    steps = res.steps_df()
    assert (steps["accepted"] == kept).mean() > 0.85 and (steps["accepted"] <= kept).all()


def test_a_feature_heads_tree_stays_exact_and_keeps_at_least_its_chains_acceptance(echo):
    target, head, prompts, eos, refs = echo
    chain = speculative_generate(target, head, prompts, gamma=1, max_new_tokens=40, eos_token_id=eos)
    tree = speculative_generate(target, head, prompts, gamma=1, max_new_tokens=40, eos_token_id=eos,
                                draft_tree={(0,), (1,), (0, 0), (0, 1)})
    assert tree.sequences == chain.sequences == refs
    per_step = [r.metrics.accepted / r.metrics.steps for r in (chain, tree)]
    assert per_step[1] > per_step[0]  # its own features carried it on past depth 1


@pytest.mark.parametrize("recent", [False, True])
def test_greedy_lookup_and_hybrid_trees_are_token_identical(tiny_pair, recent):
    target, draft = tiny_pair
    prompts = _repetitive_prompts()
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][9]
    refs = _greedy_reference(target, prompts, 40, eos)
    lookup = PromptLookup(2, recent=recent, tree_nodes=6)
    alone = speculative_generate(target, lookup, prompts, gamma=4, max_new_tokens=40, eos_token_id=eos)
    chain = speculative_generate(target, PromptLookup(2, recent=recent), prompts, gamma=4, max_new_tokens=40,
                                 eos_token_id=eos)
    mixed = speculative_generate(target, Hybrid(draft, lookup), prompts, gamma=4, max_new_tokens=40,
                                 eos_token_id=eos, draft_tree=PAIR)
    assert alone.sequences == chain.sequences == mixed.sequences == refs
    assert alone.steps_df()["proposed"].max() > 4  # more nodes than one continuation holds: a tree
    assert alone.metrics.accepted >= chain.metrics.accepted
    assert set(mixed.steps_df()["source"]) == {0, 1}


@pytest.mark.parametrize("draft_kind", ["model", "lookup", "hybrid"])
def test_sampled_tree_decoding_keeps_the_target_distribution(small_vocab_pair, draft_kind):
    """Chi-square of the first 3 tokens (20,000 draws) against the exact target distribution."""
    target, draft = small_vocab_pair
    warp = dict(temperature=0.9)
    prompt = (1, 5, 3, 1, 5)
    exact = _exact_joint(target, SamplingConfig(**warp), 8, prompt=prompt)
    lookup = PromptLookup(1, tree_nodes=4)
    drafts = {"model": (draft, {(0,), (1,), (0, 0)}), "lookup": (lookup, None),
              "hybrid": (Hybrid(draft, lookup), {(0,), (1,)})}
    chosen, tree = drafts[draft_kind]
    samples = _first_tokens_sd(target, chosen, None, 20_000, prompt=prompt, gamma=3, draft_tree=tree, **warp)
    assert _chi2_pvalue(samples, exact) > SIGNIFICANCE


def test_trees_refuse_lossy_acceptance_and_misplaced_settings(tiny_pair):
    target, draft = tiny_pair
    run = dict(gamma=2, max_new_tokens=3)
    with pytest.raises(DistillSpecError, match="verified losslessly only"):
        speculative_generate(target, draft, [[5, 6]], acceptance=RejectionSampling("lin", 0.5), draft_tree=PAIR,
                             sampling=SamplingConfig(temperature=0.7), **run)
    with pytest.raises(DistillSpecError, match="needs bonus=True and no draft_confidence"):
        speculative_generate(target, draft, [[5, 6]], draft_confidence=0.5, draft_tree=PAIR, **run)
    with pytest.raises(DistillSpecError, match=r"PromptLookup\(tree_nodes=...\)"):
        speculative_generate(target, PromptLookup(2), [[5, 6]], draft_tree=PAIR, **run)
    with pytest.raises(DistillSpecError, match="tree_nodes=-1 must be an int >= 0"):
        PromptLookup(2, tree_nodes=-1)
    # lossless at eps = 1 is accepted
    res = speculative_generate(target, draft, [[5, 6]], acceptance=RejectionSampling("lin", 1.0), draft_tree=PAIR,
                               **run)
    assert len(res.sequences[0]) == 3 and np.isfinite(res.metrics.alpha_pos)
