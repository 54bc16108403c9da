"""What decoded text is worth, per prompt: the task's own score (ROUGE against CNN/DM's highlights, exact match of
GSM8K's final number) and how the target judges it (its negative log-likelihood per output token, and the share of
output tokens outside its top-p nucleus at the decoding temperature). Lossless decoding leaves all of these where
the target's own generation has them; lenient acceptance rules trade them for speed."""

from __future__ import annotations

import re

import pandas as pd
import torch

from .acceptance import GreedyLenience, RejectionSampling
from .errors import require
from .forward import position_ids
from .sampling import SamplingConfig

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
NUCLEUS_TOP_P = 0.95  # the nucleus an output token should fall in

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")

# The quality-latency sweep: lossless, DistillSpec's lenient rejection sampling ('sq' at eps is 'lin' at eps^2, so
# it is left out; eps=1 is lossless), and greedy lenience (GreedyLenience: accept when p1(x) >= l * max p1)
SWEEP = ("lossless", "lin:0.5", "lin:0.2", "lin:0.05", "exp:0.5", "exp:0.2", "exp:0.05", "greedy:1", "greedy:0.5",
         "greedy:0.2")


def acceptance_rule(setting: str, temperature: float):
    """A sweep setting ('lossless', 'lin:EPS', 'exp:EPS', 'greedy:L') as the decoder's acceptance rule (None is
    lossless); temperature: the decoding temperature, which greedy lenience needs to read the T=1 ranking."""
    kind, _, value = setting.partition(":")
    known = "'lossless', 'lin:EPS', 'exp:EPS' or 'greedy:L' (EPS, L in (0, 1])"
    if kind == "lossless" and not value:
        return None
    require(kind in ("lin", "exp", "greedy") and value, f"Unknown acceptance setting '{setting}'; use {known}.")
    try:
        number = float(value)
    except ValueError:
        number = None
    require(number is not None, f"Acceptance setting '{setting}': '{value}' is not a number; use {known}.")
    return GreedyLenience(number, temperature) if kind == "greedy" else RejectionSampling(kind, number)


def rouge_scores(summaries: list[str], references: list[str]) -> pd.DataFrame:
    """ROUGE-1/2/L F1 of each summary against its reference (rouge-score, Porter stemming as in the CNN/DM
    literature), one row per prompt."""
    from rouge_score import rouge_scorer

    require(len(summaries) == len(references),
            f"{len(summaries)} summaries for {len(references)} references: pass one reference per summary.")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = [{k: s.fmeasure for k, s in scorer.score(ref, out).items()} for out, ref in zip(summaries, references)]
    return pd.DataFrame(rows, columns=list(ROUGE_TYPES))


def final_number(text: str) -> str | None:
    """The answer a GSM8K solution ends with: the number after the last '####' when there is one (the gold format,
    which the task's system prompt asks for), else the last number in the text; commas and a trailing '.0' dropped
    so that '1,000' and '1000.0' match '1000'. None when the text has no number."""
    after = _NUMBER.findall(text.rsplit("####", 1)[1]) if "####" in text else []
    numbers = after[:1] or _NUMBER.findall(text)[-1:]
    if not numbers:
        return None
    number = numbers[0]
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


def exact_match(outputs: list[str], gold_answers: list[str]) -> pd.DataFrame:
    """GSM8K exact match: the output's final number equals the gold answer's (the number after its '####')."""
    require(len(outputs) == len(gold_answers),
            f"{len(outputs)} outputs for {len(gold_answers)} gold answers: pass one answer per output.")
    rows = []
    for out, gold in zip(outputs, gold_answers):
        want = final_number(gold)
        require(want is not None, f"The gold answer {gold[-80:]!r} has no final number: is it a GSM8K answer?")
        got = final_number(out)
        rows.append({"answer": got, "gold": want, "exact_match": got == want})
    return pd.DataFrame(rows)


def task_quality(task: str, outputs: list[str], references: list[str]) -> pd.DataFrame:
    """The task's score per prompt: ROUGE for cnndm, exact match for gsm8k."""
    require(task in ("gsm8k", "cnndm"), f"No quality measure for task '{task}'; known: gsm8k, cnndm.")
    return rouge_scores(outputs, references) if task == "cnndm" else exact_match(outputs, references)


@torch.no_grad()
def target_fit(target, prompts: list[list[int]], outputs: list[list[int]], *, temperature: float,
               top_p: float = NUCLEUS_TOP_P, batch_size: int = 8, pad_token_id: int = 0) -> pd.DataFrame:
    """Per prompt: output tokens, the target's summed negative log-likelihood of them (its own distribution, T=1),
    and how many fall outside its top-p nucleus at the decoding temperature (zero probability after transformers'
    temperature and top-p warpers). An empty output counts zero tokens."""
    require(len(prompts) == len(outputs), f"{len(prompts)} prompts for {len(outputs)} outputs: pass one per prompt.")
    require(all(len(p) > 0 for p in prompts), "Every prompt needs at least one token.")
    nucleus = SamplingConfig(temperature=temperature, top_p=top_p)
    device = next(target.parameters()).device
    rows = []
    for start in range(0, len(prompts), batch_size):
        texts = [p + o for p, o in zip(prompts[start:start + batch_size], outputs[start:start + batch_size])]
        width = max(len(t) for t in texts)
        ids = torch.full((len(texts), width), pad_token_id, dtype=torch.long)  # [B, L], left-padded
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            ids[i, width - len(t):] = torch.tensor(t)
            mask[i, width - len(t):] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = target(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits.float()
        for i, out in enumerate(outputs[start:start + batch_size]):
            n = len(out)
            if n == 0:
                rows.append({"tokens": 0, "nll_sum": 0.0, "outside_nucleus": 0})
                continue
            at = logits[i, width - n - 1:width - 1]  # [n, V]: the logits that predict each output token
            token = ids[i, width - n:, None]  # [n, 1]
            nll = -torch.log_softmax(at, -1).gather(-1, token).sum().item()
            outside = (nucleus.probs(at).gather(-1, token) == 0).sum().item()
            rows.append({"tokens": n, "nll_sum": nll, "outside_nucleus": int(outside)})
    return pd.DataFrame(rows, columns=["tokens", "nll_sum", "outside_nucleus"])


def judge(task: str, tokenizer, target, prompts: list[list[int]], outputs: list[list[int]], references: list[str], *,
          temperature: float, top_p: float = NUCLEUS_TOP_P, batch_size: int = 8) -> pd.DataFrame:
    """One row per prompt: the task's score of the decoded text (special tokens dropped) and the target's view of
    its tokens (target_fit)."""
    texts = tokenizer.batch_decode(outputs, skip_special_tokens=True)
    fit = target_fit(target, prompts, outputs, temperature=temperature, top_p=top_p, batch_size=batch_size,
                     pad_token_id=tokenizer.pad_token_id or 0)
    return pd.concat([task_quality(task, texts, references), fit], axis=1)


def score_column(task: str) -> str:
    """The per-prompt column a task's quality is read from: ROUGE-L F1 (cnndm), exact match (gsm8k)."""
    return "rougeL" if task == "cnndm" else "exact_match"

