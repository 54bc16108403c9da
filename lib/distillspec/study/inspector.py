"""The per-bin inspector of the analysis notebook: an ipywidgets slider over teacher-entropy bins, showing each
bin's acceptance and example tokens as HTML."""

from __future__ import annotations

import pandas as pd

from ..errors import require


def bin_examples(tokens: dict[str, pd.DataFrame], bins: pd.DataFrame, draft: str, bin_index: int,
                 tokenizer=None, k: int = 8, entropy_col: str = "target_entropy") -> pd.DataFrame:
    """Up to k verified positions of one draft in one entropy bin. With a tokenizer, `text` is the token's text
    quoted repr-style, so whitespace shows (' (' keeps its space, a newline reads '\\n')."""
    edges = bins[bins["bin"] == bin_index]
    if edges.empty:
        return pd.DataFrame()
    lo, hi = float(edges["lo"].iloc[0]), float(edges["hi"].iloc[0])
    t = tokens[draft]
    inside = t[(t[entropy_col] >= lo) & (t[entropy_col] <= hi)].head(k).copy()
    if tokenizer is not None:
        inside["text"] = [repr(tokenizer.decode([int(x)])) for x in inside["token"]]
    return inside[[c for c in ("row", "step", "token", "text", "accepted", "p", "q", entropy_col) if c in inside]]


def entropy_range_label(lo: float, hi: float) -> str:
    return f"{lo:.3g}\u2013{hi:.3g} nats"


def _lab_html(body: str) -> str:
    """HTML in JupyterLab's own rendered-output style (tables look like the notebook's DataFrames)."""
    return f'<div class="jp-RenderedHTMLCommon">{body}</div>'


# The panel works without a kernel, so ipywidgets' "disconnected" chain icon (shown on widgets restored from a saved
# notebook) would only mislead there.


_INSPECTOR_CLASS = "distillspec-inspector"


_INSPECTOR_STYLE = (f"<style>.{_INSPECTOR_CLASS}.jupyter-widgets-disconnected::before, "
                    f".{_INSPECTOR_CLASS} .jupyter-widgets-disconnected::before {{ display: none; }}</style>")


def _bin_summary_html(bins: pd.DataFrame, bin_index: int, drafts: list[str]) -> str:
    b = bins[bins["bin"] == bin_index]
    head = (f"<p><b>teacher entropy {entropy_range_label(b['lo'].iloc[0], b['hi'].iloc[0])}</b>: acceptance of "
            "verified draft tokens (alpha_pos) with its Wilson 95% CI, and the teacher-scored expected acceptance</p>")
    table = b[["draft", "n", "accept_rate", "ci_lo", "ci_hi", "expected_accept"]].rename(columns={
        "n": "verified tokens", "accept_rate": "alpha_pos", "ci_lo": "CI low", "ci_hi": "CI high",
        "expected_accept": "expected acceptance"}).to_html(index=False, border=0, float_format="%.3f")
    thin = [d for d in drafts if d not in set(b["draft"])]
    note = f"<p>Too few tokens in this bin to show: {', '.join(thin)}.</p>" if thin else ""
    return _lab_html(head + table + note)


def _examples_html(tokens, bins, draft: str, bin_index: int, tokenizer, k: int) -> str:
    examples = bin_examples(tokens, bins, draft, bin_index, tokenizer, k)
    if examples.empty:
        return _lab_html(f"<p>No verified tokens of <b>{draft}</b> in this bin.</p>")
    return _lab_html(f"<p>Examples from <b>{draft}</b> (first {len(examples)} in this bin):</p>"
                     + examples.to_html(index=False, border=0, float_format="%.4g"))


def bin_inspector(tokens: dict[str, pd.DataFrame], bins: pd.DataFrame, tokenizer=None, k: int = 8):
    """An ipywidgets panel: a slider over the teacher-entropy bins (labelled by their range in nats) and a draft
    dropdown; shows every draft's acceptance in the bin with its CI, and k example tokens of the chosen draft.

    Every (bin, draft) view is rendered up front and the controls switch between them in the browser (jslink),
    so the panel also works in a saved, trusted notebook with no kernel running."""
    import ipywidgets as widgets

    bin_ids = sorted(bins["bin"].unique().tolist())
    require(len(bin_ids) > 0, "No entropy bin has enough tokens to inspect; lower min_bin_count.")
    drafts = list(tokens)
    ranges = bins.drop_duplicates("bin").set_index("bin")
    slider = widgets.SelectionSlider(
        options=[(entropy_range_label(ranges.at[b, "lo"], ranges.at[b, "hi"]), b) for b in bin_ids],
        description="teacher entropy", style={"description_width": "initial"}, layout={"width": "460px"})
    dropdown = widgets.Dropdown(options=drafts, description="draft")
    summary = widgets.Stack([widgets.HTML(_bin_summary_html(bins, b, drafts)) for b in bin_ids], selected_index=0)
    examples = widgets.Stack([  # [draft][bin]
        widgets.Stack([widgets.HTML(_examples_html(tokens, bins, d, b, tokenizer, k)) for b in bin_ids],
                      selected_index=0) for d in drafts], selected_index=0)
    widgets.jslink((slider, "index"), (summary, "selected_index"))
    widgets.jslink((dropdown, "index"), (examples, "selected_index"))
    for per_bin in examples.children:
        widgets.jslink((slider, "index"), (per_bin, "selected_index"))
    panel = widgets.VBox([widgets.HBox([slider, dropdown]), widgets.HTML(_INSPECTOR_STYLE), summary, examples])
    panel.add_class(_INSPECTOR_CLASS)
    return panel


__all__ = ["bin_examples", "bin_inspector", "entropy_range_label"]
