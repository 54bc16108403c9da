import numpy as np
import pandas as pd
import pytest

from distillspec.study.figures import draft_colors
from distillspec.study.inspector import bin_inspector
from distillspec.study.markdown import timing_machines
from distillspec.study.stats import wilson_interval
from distillspec.study.tables import acceptance_by_entropy, assign_bins, entropy_bin_edges, summary_table
from distillspec.study.results import format_timing_machines
from distillspec.study.stats import ratio_bootstrap


def _records(rate_fn, n=6000, seed=0, draft_rows=40):
    """Synthetic verified positions: teacher entropy log-uniform in [0.01, 10], accepted with prob rate_fn(H)."""
    rng = np.random.default_rng(seed)
    h = np.exp(rng.uniform(np.log(0.01), np.log(10), n))
    acc = rng.random(n) < rate_fn(h)
    return pd.DataFrame({"row": rng.integers(0, draft_rows, n), "step": np.arange(n), "token": 5, "accepted": acc,
                         "p": 0.5, "q": 0.5, "target_entropy": h, "expected_accept": rate_fn(h)})


def test_log_spaced_edges_and_assignment():
    edges = entropy_bin_edges(np.array([0.01, 0.1, 1.0, 10.0]), 3)
    np.testing.assert_allclose(edges, [0.01, 0.1, 1.0, 10.0])
    assert assign_bins(np.array([0.0, 0.01, 0.05, 0.1, 9.9, 10.0]), edges).tolist() == [0, 0, 0, 1, 2, 2]


def test_per_bin_acceptance_recovers_known_rates_and_filters_small_bins():
    tokens = {"a": _records(lambda h: np.where(h < 1, 0.8, 0.3)), "b": _records(lambda h: 0.5 + 0 * h, seed=1)}
    edges = np.array([0.01, 0.1, 1.0, 10.0])
    bins = acceptance_by_entropy(tokens, edges=edges, min_count=100)
    a = bins[bins.draft == "a"].set_index("bin")["accept_rate"]
    assert a[0] == pytest.approx(0.8, abs=0.04) and a[1] == pytest.approx(0.8, abs=0.04)
    assert a[2] == pytest.approx(0.3, abs=0.04)
    assert bins[bins.draft == "b"]["accept_rate"].between(0.45, 0.55).all()
    assert (bins["ci_lo"] <= bins["accept_rate"]).all() and (bins["accept_rate"] <= bins["ci_hi"]).all()
    counts = bins[bins.draft == "a"]["n"].tolist()
    filtered = acceptance_by_entropy(tokens, edges=edges, min_count=max(counts))
    assert (filtered["n"] >= max(counts)).all() and len(filtered) < len(bins)


def test_bootstrap_ci_covers_the_true_rate_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    true, hits, trials = 0.6, 0, 200
    for t in range(trials):
        proposed = rng.integers(5, 40, size=30)  # 30 prompts of different lengths
        accepted = rng.binomial(proposed, true)
        _, lo, hi = ratio_bootstrap(accepted, proposed, n_boot=400, seed=t)
        hits += lo <= true <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(np.array([50]), np.array([100]))
    assert lo[0] == pytest.approx(0.4038, abs=1e-3) and hi[0] == pytest.approx(0.5962, abs=1e-3)


def test_summary_table_counts():
    steps = pd.DataFrame({"row": [0, 0, 1], "step": [0, 1, 0], "proposed": [5, 5, 5], "accepted": [5, 1, 0],
                          "emitted": [6, 2, 1]})
    tokens = pd.DataFrame({"expected_accept": [0.5, 0.7]})
    t = summary_table({"d": steps}, {"d": tokens}, gamma=5, n_boot=200).iloc[0]
    assert t["alpha_tok"] == pytest.approx(6 / 15)
    assert t["alpha_pos"] == pytest.approx(6 / (5 + 2 + 1))
    assert t["tau"] == pytest.approx(9 / 3)
    assert t["n_prompts"] == 2 and t["n_tokens"] == 9


def test_bin_inspector_prerenders_every_bin_and_draft_and_links_the_controls():
    """Slider labelled by entropy range; one view per bin and per (draft, bin), switched by jslinks, so the saved
    notebook works without a kernel; whitespace tokens quoted; a draft with no tokens in a bin says so."""
    from ipywidgets.widgets import widget as widget_registry
    from ipywidgets.widgets.widget_link import Link

    from distillspec.study.inspector import entropy_range_label

    class Tok:  # a tokenizer whose tokens are whitespace-heavy
        def decode(self, ids):
            return {5: " (", 6: "\n"}[ids[0]]

    tokens = {"a": _records(lambda h: np.where(h < 1, 0.8, 0.3)), "b": _records(lambda h: 0.5 + 0 * h, seed=1)}
    tokens["a"]["token"] = 6
    tokens["b"] = tokens["b"][tokens["b"]["target_entropy"] > 1]  # b has no tokens in the low bins
    bins = acceptance_by_entropy(tokens, n_bins=4, min_count=50)
    panel = bin_inspector(tokens, bins, Tok())
    (slider, dropdown), _, summary, examples = panel.children[0].children, *panel.children[1:]
    bin_ids = sorted(bins["bin"].unique())
    ranges = bins.drop_duplicates("bin").set_index("bin")
    assert [label for label, _ in slider.options] == [
        entropy_range_label(ranges.at[b, "lo"], ranges.at[b, "hi"]) for b in bin_ids]
    assert [v for _, v in slider.options] == bin_ids and list(dropdown.options) == ["a", "b"]
    for i, b in enumerate(bin_ids):
        html = summary.children[i].value
        assert entropy_range_label(ranges.at[b, "lo"], ranges.at[b, "hi"]) in html
        for _, row in bins[bins["bin"] == b].iterrows():
            assert f"{row['accept_rate']:.3f}" in html and f">{int(row['n'])}<" in html
    assert "'\\n'" in examples.children[0].children[-1].value  # a's newline token, quoted and visible
    assert "No verified tokens of <b>b</b> in this bin" in examples.children[1].children[0].value
    assert "' ('" in examples.children[1].children[-1].value
    links = {(w.source[0].model_id, w.source[1], w.target[0].model_id, w.target[1])
             for w in widget_registry._instances.values() if isinstance(w, Link)}
    assert (slider.model_id, "index", summary.model_id, "selected_index") in links
    assert (dropdown.model_id, "index", examples.model_id, "selected_index") in links
    assert all((slider.model_id, "index", s.model_id, "selected_index") in links for s in examples.children)


def test_draft_colors_are_the_same_in_every_figure():
    a = draft_colors(["baseline", "fkl", "jsd", "skd"])
    b = draft_colors(["skd", "jsd", "mine", "other"])  # different order, a subset, and unknown names
    assert a["jsd"] == b["jsd"] and a["skd"] == b["skd"]
    assert len(set(b.values())) == 4 and b["mine"] not in a.values() and b["other"] not in a.values()


def test_drafts_timed_on_different_machines_are_listed_apart():
    """A speedup is only comparable with one timed on the same machine: results name where each draft was timed
    (the recorded machine; for older records, their run's target-only tok/s) and say nothing when it was one."""
    timed = [{"setting": "greedy, batch 1", "gamma": 1}]
    old = {"timed": timed, "target_tokens_per_s": 110.94}
    slow = {"timed": timed, "target_tokens_per_s": 22.0, "machine": "cpu: X, 2 cores, no bf16 instructions"}
    rows = {"a": old, "b": dict(old), "c": slow, "d": {**slow, "timed_on": "cuda: Y"}, "e": {"target_tokens_per_s": 5}}
    assert timing_machines(rows) == {("not recorded", "110.9"): ["a", "b"],
                                     ("cpu: X, 2 cores, no bf16 instructions", "22.0"): ["c"],
                                     ("cuda: Y", "-"): ["d"]}  # e was never timed; d was timed again elsewhere
    text = format_timing_machines(rows)
    assert "| not recorded | 110.9 | a, b |" in text and "| cuda: Y | - | d |" in text and "| e" not in text
    assert format_timing_machines({"a": old, "b": old}) == ""
    assert format_timing_machines({"a": {**old, "machine": "m"}, "b": {**old, "machine": "m"}}) == ""
