"""Quality of decoded text (quality.py) and the greedy-lenience acceptance rule."""

import pytest
import torch

from conftest import REPO
from distillspec import DistillSpecError
from distillspec.acceptance import GreedyLenience
from distillspec.data import load_raw
from distillspec.quality import acceptance_rule, exact_match, final_number, rouge_scores, target_fit, task_quality
from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate


def test_rouge_matches_hand_counts():
    scores = rouge_scores(["the cat sat", "a b c", "the dogs ran"], ["the cat ran", "a b c", "the dog runs"])
    first = scores.iloc[0]
    assert first["rouge1"] == pytest.approx(2 / 3) and first["rouge2"] == pytest.approx(1 / 2)
    assert first["rougeL"] == pytest.approx(2 / 3)
    assert scores.iloc[1].tolist() == [1.0, 1.0, 1.0]
    assert scores.iloc[2]["rouge1"] == pytest.approx(2 / 3)  # stemmed: dogs = dog; ran is not run
    with pytest.raises(DistillSpecError, match="one reference per summary"):
        rouge_scores(["a"], [])


@pytest.mark.parametrize("text,number", [
    ("so she has 5 + 3 = 8 apples.\n#### 8", "8"),
    ("Total: $1,200.\n#### 1,200", "1200"),
    ("It costs 12.50 dollars, so 25.0 in all", "25"),
    ("#### -3", "-3"),
    ("the answer is 7 #### \nthen 9", "9"),
    ("no digits here", None),
])
def test_final_number_reads_the_gold_format_and_free_text(text, number):
    assert final_number(text) == number


def test_exact_match_on_real_gsm8k_answers(shared_data):
    answers = load_raw("gsm8k", "test", str(shared_data))["answer"][:40]
    assert exact_match(answers, answers)["exact_match"].all()
    shifted = exact_match(answers, answers[1:] + answers[:1])["exact_match"]
    assert shifted.mean() < 0.2
    free = [a.split("####")[0] + f"So the answer is {final_number(a)}." for a in answers]  # no '####' in the output
    assert exact_match(free, answers)["exact_match"].all()
    with pytest.raises(DistillSpecError, match="no final number"):
        exact_match(["1"], ["no number"])
    with pytest.raises(DistillSpecError, match="No quality measure"):
        task_quality("xsum", ["a"], ["b"])


def _greedy_outputs(model, prompts, n):
    outputs = []
    for p in prompts:
        ids = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        outputs.append(ids[0, len(p):].tolist())
    return outputs


def test_target_fit_is_the_targets_own_likelihood_whatever_the_batching(tiny_pair):
    target, _ = tiny_pair
    prompts = [[5, 9, 2, 7], [3, 8], [11, 4, 6, 1, 2, 9]]
    outputs = _greedy_outputs(target, prompts, 6)
    outputs[1] = outputs[1][:3]  # ragged outputs
    batched = target_fit(target, prompts + [[1, 2]], outputs + [[]], temperature=0.7, batch_size=4)
    assert batched["tokens"].tolist() == [6, 3, 6, 0] and batched["nll_sum"].iloc[3] == 0
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        with torch.no_grad():
            logits = target(torch.tensor([p + o])).logits[0, len(p) - 1:-1]
        nll = -torch.log_softmax(logits, -1).gather(-1, torch.tensor(o)[:, None]).sum().item()
        assert batched["nll_sum"].iloc[i] == pytest.approx(nll, rel=1e-4, abs=1e-4)
    assert batched["outside_nucleus"].sum() == 0  # the target's argmax is always in its nucleus


def test_tokens_the_target_ranks_last_fall_outside_its_nucleus(tiny_pair):
    target, _ = tiny_pair
    prompt = [5, 9, 2, 7]
    worst = []
    for _ in range(5):
        with torch.no_grad():
            worst.append(target(torch.tensor([prompt + worst])).logits[0, -1].argmin().item())
    fit = target_fit(target, [prompt], [worst], temperature=0.6)
    assert fit["outside_nucleus"].iloc[0] == 5
    assert fit["nll_sum"].iloc[0] / 5 > target_fit(target, [prompt], _greedy_outputs(target, [prompt], 5),
                                                   temperature=0.6)["nll_sum"].iloc[0] / 5


def test_greedy_lenience_reads_the_untempered_ranking():
    logits = torch.tensor([[2.0, 1.5, 0.0, -1.0], [0.3, 0.2, 0.1, 0.0]])
    p1 = torch.softmax(logits, -1)
    for temperature in (1.0, 0.6):
        p = SamplingConfig(temperature=temperature).probs(logits)
        for lenience in (1.0, 0.5, 0.2):
            for token in range(4):
                tokens = torch.tensor([token, token])
                accept, residual = GreedyLenience(lenience, temperature)(tokens, p, torch.full_like(p, 0.25),
                                                                         torch.zeros(2))
                want = p1.gather(-1, tokens[:, None]).squeeze(-1) >= lenience * p1.max(-1).values - 1e-6
                assert accept.tolist() == want.tolist(), (temperature, lenience, token)
                assert torch.equal(residual, p)
    with pytest.raises(DistillSpecError, match="must be in"):
        GreedyLenience(0.0)


def test_greedy_lenience_accepts_more_as_it_loosens(tiny_pair):
    target, draft = tiny_pair
    prompts = [[6, 12, 3, 9], [4, 4, 8]]
    kw = dict(gamma=4, max_new_tokens=30, sampling=SamplingConfig(temperature=0.7, top_p=0.95), seed=9,
              eos_token_id=[])
    alphas = [speculative_generate(target, draft, prompts, acceptance=GreedyLenience(l, 0.7), **kw).metrics.alpha_tok
              for l in (1.0, 0.2, 0.01)]
    assert alphas[0] < alphas[1] < alphas[2], alphas


def _row(draft, setting, speed, score):
    return {"draft": draft, "setting": setting, "alpha_tok": None if speed is None else 0.5,
            "speedup": None if speed is None else (speed, speed - 0.1, speed + 0.1),
            "score": (score, score - 0.1, score + 0.1),
            "nll_per_token": (1.5, 1.4, 1.6), "outside_nucleus": (0.02, 0.01, 0.03)}


def test_the_quality_table_and_figure_show_every_row():
    from distillspec.study.quality_latency import plot_quality_latency, quality_table

    rows = [_row("target", "generate", None, 0.3), _row("fkl", "lossless", 1.2, 0.3), _row("fkl", "lin:0.2", 1.5, 0.25)]
    table = quality_table(rows, "cnndm").splitlines()
    assert table[0].startswith("| draft | setting | alpha_tok | speedup (batch 1) | ROUGE-L |")
    assert table[2] == ("| target | generate |  | 1 (reference) | 30.0 [20.0, 40.0] | 1.500 [1.400, 1.600] | "
                        "2.0 [1.0, 3.0]% |")
    assert table[4].startswith("| fkl | lin:0.2 | 50.0% | 1.50x [1.40, 1.60] | 25.0 [15.0, 35.0] |")
    fig = plot_quality_latency(rows, "cnndm")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 2


def test_speedup_summary_is_the_pooled_ratio():
    import pandas as pd

    from distillspec.study.quality_latency import speedup_summary

    timing = pd.DataFrame({"sd_tokens": [10, 20], "sd_s": [1.0, 1.0], "target_tokens": [10, 20],
                           "target_s": [2.0, 3.0]})
    est, lo, hi = speedup_summary(timing)
    assert est == pytest.approx((30 / 2) / (30 / 5)) and lo <= est <= hi


@pytest.mark.slow
def test_the_benchmark_judges_each_setting_once_and_resumes(tmp_path, shared_data):
    """benchmarks/quality_latency.py on the tiny pair: the target's row and one per setting, a table and a figure;
    run again with one more setting, it decodes only that one; loosening the rule accepts more."""
    import json
    import subprocess
    import sys

    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.update(data_source=str(shared_data), draft_vocab=None)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, str(REPO / "benchmarks" / "quality_latency.py"), "--config", str(config), "--run",
               str(tmp_path / "run"), "--drafts", "baseline", "--prompts", "4", "--timed", "1", "--max-new-tokens", "8",
               "--batch-size", "4", "--out", str(tmp_path / "out"), "--settings"]
    first = subprocess.run(command + ["lossless,greedy:0.5"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(command + ["lossless,greedy:0.5,lin:0.05"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [json.loads(line)["setting"] for line in again.stdout.splitlines() if line.startswith("{")] == ["lin:0.05"]
    rows = {(r["draft"], r["setting"]): r for r in map(json.loads, (tmp_path / "out" / "rows.jsonl").open())}
    assert list(rows) == [("target", "generate"), ("baseline", "lossless"), ("baseline", "greedy:0.5"),
                          ("baseline", "lin:0.05")]
    assert rows["baseline", "lin:0.05"]["alpha_tok"] > rows["baseline", "lossless"]["alpha_tok"]
    assert all(0 <= r["score"][0] <= 1 and r["nll_per_token"][0] > 0 for r in rows.values())
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.count("\n| baseline |") == 3 and (tmp_path / "out" / "quality_latency.png").is_file()
    from distillspec.study.quality_latency import quality_table
    assert quality_table(list(rows.values()), "gsm8k") == table  # the rows rebuild the table
    other = subprocess.run(command[:-1] + ["--top-p", "0.9", "--settings", "lossless"], capture_output=True,
                           text=True, timeout=600)  # other work into the same folder
    assert other.returncode != 0 and "top_p: 1.0 -> 0.9" in other.stderr and "pass a new --out" in other.stderr


def test_an_unknown_setting_is_named():
    with pytest.raises(DistillSpecError, match="Unknown acceptance setting 'cubic:0.5'"):
        acceptance_rule("cubic:0.5", 0.7)
    with pytest.raises(DistillSpecError, match="'x' is not a number"):
        acceptance_rule("lin:x", 0.7)
    assert acceptance_rule("lossless", 0.7) is None and acceptance_rule("greedy:0.5", 0.6).temperature == 0.6


@pytest.mark.parametrize("folder", sorted((REPO / "figures").glob("quality_latency_*")),
                         ids=lambda p: p.name)
def test_each_published_quality_latency_table_rebuilds_from_its_rows(folder):
    """A published quality-latency folder holds the benchmark's rows.jsonl, its results.md and its figure; the table
    is quality_table of those rows, in their order, byte for byte (nothing edited by hand)."""
    import json

    from distillspec.study.quality_latency import quality_table

    task = next(t for t in ("gsm8k", "cnndm") if t in folder.name)
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]
    assert (folder / "quality_latency.png").is_file()
    assert quality_table(rows, task) == (folder / "results.md").read_text()
