"""Draft trees replayed on the target's greedy text (trees.py): a replayed chain keeps, step for step, what the
decoder kept (a standalone draft, a feature head, prompt lookup), and the best tree is the set of the most frequent
rank paths, closed under prefixes."""

import numpy as np
import pytest
import torch

from distillspec.eagle import EagleHead
from distillspec.lookup import Hybrid, PromptLookup, continuation
from distillspec.specdec import speculative_generate
from distillspec.trees import (MISSED, best_tree, chain, head_ranks, hybrid_replay, kept, lookup_candidates,
                               lookup_replay, model_ranks, replay_steps)
from test_lookup import _repetitive_prompts
from test_specdec import _greedy_reference, _prompts


def _decoder_steps(target, draft, prompts, gamma, eos, draft_tree=None):
    """Drafts the decoder kept in each step of each prompt (greedy, fp32), one prompt at a time."""
    kept_steps = []
    for p in prompts:
        steps = speculative_generate(target, draft, [p], gamma=gamma, max_new_tokens=40, eos_token_id=eos,
                                     draft_tree=draft_tree).steps_df()
        kept_steps.append(steps.sort_values("step")["accepted"].to_numpy())
    return kept_steps


def _greedy_case(target, prompts, eos_at):
    """An EOS id that prompt 0 hits after eos_at tokens (rows end at different steps), and the greedy references."""
    eos = _greedy_reference(target, prompts[:1], 40, None)[0][eos_at]
    return eos, _greedy_reference(target, prompts, 40, eos)


def _same_but_last(replayed, decoded):
    """Every step but a row's last, where the decoder may keep drafts past the end of the text (EOS or length)."""
    assert len(replayed) == len(decoded)
    for r, d in zip(replayed, decoded):
        assert len(r) == len(d) and (r[:-1] == d[:-1]).all(), (r, d)


@pytest.mark.parametrize("gamma", [1, 3])
def test_a_replayed_chain_keeps_what_the_decoder_kept_with_a_standalone_draft(tiny_pair, gamma):
    target, draft = tiny_pair
    prompts = _prompts()
    eos, outs = _greedy_case(target, prompts, 7)
    replayed = [replay_steps(model_ranks(draft, p, o, 8), chain(gamma)) for p, o in zip(prompts, outs)]
    decoded = _decoder_steps(target, draft, prompts, gamma, eos)
    _same_but_last(replayed, decoded)
    assert sum(r.sum() for r in replayed) > 0  # some drafts were kept: the comparison says something


def test_a_replayed_chain_keeps_what_the_decoder_kept_with_a_feature_head(tiny_pair):
    """A head with its own random projection (it reads the features: they change its drafts)."""
    target, _ = tiny_pair
    torch.manual_seed(0)
    head = EagleHead(target, init_from_layer=0).eval()
    prompts = _prompts()[:4]
    eos, outs = _greedy_case(target, prompts, 7)
    ranks = [head_ranks(head, target, p, o, 4) for p, o in zip(prompts, outs)]
    _same_but_last([replay_steps(r, chain(3)) for r in ranks], _decoder_steps(target, head, prompts, 3, eos))
    assert (np.concatenate(ranks) < MISSED).any()


@pytest.mark.parametrize("gamma", [2, 6])
def test_a_replayed_lookup_chain_keeps_what_the_decoder_kept(tiny_pair, gamma):
    target, _ = tiny_pair
    prompts = _repetitive_prompts()
    eos, outs = _greedy_case(target, prompts, 9)
    lookup = PromptLookup(max_ngram=2)
    replayed = [lookup_replay(p, o, lookup, nodes=gamma, length=gamma, eos={eos}, tree=False)[0]
                for p, o in zip(prompts, outs)]
    _same_but_last(replayed, _decoder_steps(target, lookup, prompts, gamma, eos))
    assert sum(r.sum() for r in replayed) > 0


def test_a_replayed_hybrid_keeps_what_the_decoder_kept(tiny_pair):
    target, draft = tiny_pair
    prompts = _repetitive_prompts()
    eos, outs = _greedy_case(target, prompts, 9)
    hybrid = Hybrid(draft, PromptLookup(max_ngram=2), lookup_block=5, draft_block=2)
    replayed = [hybrid_replay(p, o, hybrid.lookup, model_ranks(draft, p, o, 8), copy_block=5, own_block=2,
                              eos={eos}) for p, o in zip(prompts, outs)]
    _same_but_last([r[0] for r in replayed], _decoder_steps(target, hybrid, prompts, 5, eos))
    forwards = np.concatenate([r[2] for r in replayed])
    assert (forwards == 0).any() and (forwards == 2).any()  # both sources drafted
    fewer = [hybrid_replay(p, o, hybrid.lookup, model_ranks(draft, p, o, 8), copy_block=5, own_block=2, eos={eos},
                           min_match=2)[2] for p, o in zip(prompts, outs)]
    assert sum((f == 0).sum() for f in fewer) <= (forwards == 0).sum()  # longer matches only: lookup copies less


@pytest.mark.parametrize("tree", [{(0,), (1,)}, {(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)}])
def test_a_replayed_tree_keeps_what_the_decoders_tree_kept(tiny_pair, tree):
    """The replay's account of a static tree is what the decoder's tree verification keeps, step for step."""
    target, draft = tiny_pair
    prompts = _prompts()
    eos, outs = _greedy_case(target, prompts, 7)
    replayed = [replay_steps(model_ranks(draft, p, o, 8), frozenset(tree)) for p, o in zip(prompts, outs)]
    _same_but_last(replayed, _decoder_steps(target, draft, prompts, 1, eos, draft_tree=tree))
    assert sum(r.sum() for r in replayed) > sum(replay_steps(model_ranks(draft, p, o, 8), chain(1)).sum()
                                                for p, o in zip(prompts, outs))  # the tree kept more than a chain


@pytest.mark.parametrize("recent", [False, True])
def test_a_replayed_lookup_tree_keeps_what_the_decoders_trie_kept(tiny_pair, recent):
    target, _ = tiny_pair
    prompts = _repetitive_prompts()
    eos, outs = _greedy_case(target, prompts, 9)
    lookup = PromptLookup(max_ngram=2, recent=recent, tree_nodes=6)
    replayed = [lookup_replay(p, o, lookup, nodes=6, length=4, eos={eos}, tree=True)[0] for p, o in zip(prompts, outs)]
    _same_but_last(replayed, _decoder_steps(target, lookup, prompts, 4, eos))
    assert sum(r.sum() for r in replayed) > 0


def test_lookup_candidates_start_with_the_decoders_proposal_and_a_tree_finds_what_the_first_occurrence_misses():
    rng = np.random.default_rng(0)
    differs = 0
    for _ in range(200):
        text = rng.integers(0, 6, size=int(rng.integers(3, 40)))
        first = lookup_candidates(text, 2, 4, {5}, recent=False)
        recent = lookup_candidates(text, 2, 4, {5}, recent=True)
        mine = continuation(text, 2, 4, {5})
        assert (first[0] if first else []) == mine or mine == []  # an EOS-only first match proposes nothing
        assert sorted(map(tuple, first)) == sorted(map(tuple, recent))
        differs += first != recent
    assert differs > 0
    prompt, out = [1, 2, 3, 9, 1, 2, 4, 8, 5, 1, 2], [4, 8, 7]  # "1 2" went on "3 9" first, then "4 8"
    steps = {}
    for name, setting in {"first": dict(tree=False, lookup=PromptLookup(2)),
                          "recent": dict(tree=False, lookup=PromptLookup(2, recent=True)),
                          "tree": dict(tree=True, lookup=PromptLookup(2))}.items():
        steps[name], sizes = lookup_replay(prompt, out, nodes=6, length=3, eos=set(), **setting)
        assert (sizes <= 6).all() and (steps[name] + 1).sum() == len(out)
    assert steps["first"].tolist() == [0, 1] and steps["recent"].tolist() == steps["tree"].tolist() == [2]


def test_the_best_tree_holds_the_most_frequent_rank_paths_closed_under_prefixes():
    rng = np.random.default_rng(1)
    ranks = [np.minimum(rng.geometric(0.6, size=(50, 6)) - 1, 9) for _ in range(4)]  # rank 0 most often
    for nodes in (1, 3, 8):
        tree = best_tree(ranks, nodes)
        assert len(tree) == nodes and all(path[:-1] in tree for path in tree if len(path) > 1)
        # from every starting position together, the best tree keeps at least as many drafts as a chain of as many nodes
        total = sum(kept(row, tree) for r in ranks for row in r)
        assert total >= sum(kept(row, chain(nodes)) for r in ranks for row in r)
    assert (1,) in best_tree(ranks, 3)  # the second choice at depth 1 is more often right than two first choices
    assert best_tree([np.zeros((20, 5), int)], 4) == chain(4)
