"""Teacher-scored expected acceptance of a draft on its own samples: the SD-relevant quality of a draft."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .forward import final_hidden
from .losses import chunked_distill_loss
from .errors import require
from .sampling import SamplingConfig


@dataclass
class AcceptanceReport:
    """Means over completion positions of the draft's own samples (temperature-1 distributions)."""

    expected_accept: float  # mean sum_x min(p, q): the per-position SD acceptance probability at T=1
    teacher_entropy: float  # nats
    draft_entropy: float  # nats
    n_tokens: int
    n_prompts: int

    def as_dict(self) -> dict:
        return asdict(self)


def backbone_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states [B, T-1, H] aligned so position t predicts token t+1 (no vocab projection)."""
    return final_hidden(model, input_ids, attention_mask)[:, :-1]


def completion_mask(completions: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """[B, C] 1 up to and including the first EOS of each row."""
    is_eos = torch.isin(completions, torch.tensor(eos_ids, device=completions.device))
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after).long()


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[list[int]], *, sampling: SamplingConfig, max_new_tokens: int,
                       batch_size: int, seed: int = 0, desc: str | None = None, generate_kwargs: dict | None = None):
    """Sample completions from `model` (transformers generate, KV cache) batch_size prompts at a time, seeded per
    batch. Yields (enc, out, completion_mask) per batch: the padded prompts, prompts + completions, and [b, new]
    1 on each completion token up to and with EOS. desc: show a progress bar with this label. generate_kwargs: more
    of generate's settings (transformers' prompt lookup: prompt_lookup_num_tokens, max_matching_ngram_size)."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=desc is None):
        enc = tokenizer.pad({"input_ids": prompts[start : start + batch_size]}, return_tensors="pt").to(device)
        torch.manual_seed(seed + start)
        out = model.generate(**enc, **sampling.generate_kwargs(), **(generate_kwargs or {}),
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        yield enc, out, completion_mask(out[:, enc["input_ids"].shape[1]:], [eos])


@torch.no_grad()
def expected_acceptance(teacher, draft, tokenizer, prompts: list[list[int]], *, max_new_tokens: int,
                        temperature: float, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
                        progress: bool = True, sampler: str = "draft") -> AcceptanceReport:
    """Sample completions from the draft (or, with sampler='target', from the teacher), score every completion
    position with both models, and average sum min(p, q) (at temperature 1, as DistillSpec's acceptance) and the
    entropies. On the teacher's samples this is the acceptance SD actually sees; on the draft's own samples it
    can be gamed by a draft that collapses onto text the teacher finds predictable."""
    require(len(prompts) > 0, "No prompts to evaluate on.")
    require(sampler in ("draft", "target"), f"sampler='{sampler}' must be 'draft' or 'target'.")
    generator = draft if sampler == "draft" else teacher
    totals = torch.zeros(3, dtype=torch.float64)
    n = 0
    for enc, out, comp_mask in sample_completions(
            generator, tokenizer, prompts, sampling=SamplingConfig(temperature=temperature, top_p=top_p),
            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
            desc="expected acceptance" if progress else None):
        width = enc["input_ids"].shape[1]
        attention = torch.cat([enc["attention_mask"], comp_mask], 1)
        loss_mask = torch.zeros_like(attention)[:, 1:]
        loss_mask[:, width - 1 :] = comp_mask  # position t predicts token t+1: completion tokens start at width
        stats = chunked_distill_loss(
            backbone_hidden(draft, out, attention), backbone_hidden(teacher, out, attention),
            draft.get_output_embeddings().weight, teacher.get_output_embeddings().weight, loss_mask,
            divergence="tvd")
        totals += torch.tensor([stats.expected_accept_sum, stats.teacher_entropy_sum, stats.student_entropy_sum],
                               dtype=torch.float64)
        n += stats.n
    require(n > 0, "The draft produced no completion tokens to score.")
    mean = (totals / n).tolist()
    return AcceptanceReport(expected_accept=mean[0], teacher_entropy=mean[1], draft_entropy=mean[2], n_tokens=n,
                            n_prompts=len(prompts))


def count_new_tokens(completions: torch.Tensor, eos: int) -> int:
    """New tokens per row up to and including the first EOS (padding after EOS is not output)."""
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in completions.tolist())
