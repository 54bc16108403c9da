"""How a draft's agreement with the teacher depends on the temperature it is read at (#4, `loss_temperature`).

    DISTILLSPEC_DATA_DIR=../shared/data python benchmarks/draft_temperature.py \
        runs/distill_budget/fkl_l0/student runs/distill_budget/fkl_l0_lt1/student

On the teacher's own samples (held-out prompts, the config's T / top_p), scores the undistilled draft and each
given draft at T=1 and at the sampling temperature: expected acceptance sum min(p, q), the draft's entropy, and
the draft's mass outside its top 20 tokens. A draft trained with the loss at T<1 can match the teacher where the
loss looks (sharpened distributions) and keep a flat tail that only shows at T=1. Prints a Markdown table.
"""

import argparse

import torch
import torch.nn.functional as F

from distillspec.study.preset import StudyConfig
from distillspec.data import render_prompts
from distillspec.drafts import load_pair
from distillspec.evaluate import completion_mask
from distillspec.models import load_model
from distillspec.sampling import SamplingConfig


@torch.no_grad()
def completion_logits(model, ids, attention, width):
    """Logits [N, V] at the completion positions (position t predicts token t+1)."""
    mask = attention[:, width:].bool()
    return model(input_ids=ids, attention_mask=attention).logits[:, width - 1 : -1][mask]


def agreement(p_logits, q_logits, temperature: float) -> dict:
    p, q = F.softmax(p_logits / temperature, -1), F.softmax(q_logits / temperature, -1)
    return {"accept": torch.minimum(p, q).sum(-1).mean().item(),
            "entropy": -(q * q.clamp_min(1e-30).log()).sum(-1).mean().item(),
            "tail": 1 - q.topk(20, -1).values.sum(-1).mean().item()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("drafts", nargs="*", help="saved draft directories (the undistilled draft is always scored)")
    ap.add_argument("--config", default="configs/offline_gsm8k_full.yaml")
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    cfg = StudyConfig.from_yaml(args.config)
    teacher, base, tok = load_pair(cfg, training=True)
    prompts = render_prompts(tok, cfg.replace(n_eval=args.n_eval).eval_prompts(tok))
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
    torch.manual_seed(cfg.seed)
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p)
    ids = teacher.generate(**enc, **sampling.generate_kwargs(),
                           max_new_tokens=args.tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    width = enc["input_ids"].shape[1]
    attention = torch.cat([enc["attention_mask"], completion_mask(ids[:, width:], [tok.eos_token_id])], 1)
    p_logits = completion_logits(teacher, ids, attention, width)
    temps = (1.0, cfg.temperature)
    print(f"{args.n_eval} held-out {cfg.task} prompts x {args.tokens} teacher-sampled tokens ({len(p_logits)} "
          f"positions)\n")
    print("| draft | " + " | ".join(f"accept T={t} | entropy T={t} | mass outside top-20 T={t}" for t in temps)
          + " |\n|---|" + "---|---|---|" * len(temps))
    for name in ["undistilled", *args.drafts]:
        draft = base if name == "undistilled" else load_model(name)[0]
        q_logits = completion_logits(draft, ids, attention, width)
        cells = [agreement(p_logits, q_logits, t) for t in temps]
        print(f"| {name} | " + " | ".join(f"{c['accept']:.3f} | {c['entropy']:.2f} | {c['tail']:.3f}" for c in cells)
              + " |")


if __name__ == "__main__":
    main()
