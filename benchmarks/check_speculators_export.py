"""Does vllm-project/speculators load an exported feature head as the head it is? `make check-speculators` runs
the two stages, each in its own environment (speculators pins older transformers than the project):

    .venv/bin/python benchmarks/check_speculators_export.py reference [--head DIR --target NAME] --work DIR
    .venv-speculators/bin/python benchmarks/check_speculators_export.py speculators --work DIR

reference (the project's environment): exports the head (`python -m distillspec export --to vllm`) into
DIR/export and writes DIR/reference.safetensors: token ids [1, T], the target's fused features beside them
[1, T, 3H] and the head's logits over its vocabulary [1, T, N]. Without --head, a random fused head over a tiny
random Llama target (saved to DIR/target with the offline tokenizer) and a reduced vocabulary (every 17th id).
speculators (speculators' environment): loads DIR/export with `Eagle3DraftModel.from_pretrained`, the embedding
from the target's checkpoint (EAGLE-3 checkpoints share the target's), and runs its first drafting step on the
same ids and features: through its modules one by one (logits compared) and through its own forward (its greedy
draft tokens compared with the head's argmax). Prints one JSON line; exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def reference(work: Path, head: str | None, target: str | None) -> dict:
    import torch
    from safetensors.torch import save_file

    from distillspec.eagle import EagleHead, load_head, read_head_meta, save_head, target_features
    from distillspec.export import export_draft
    from distillspec.export_head import head_vocab
    from distillspec.models import load_model, load_tokenizer, resolve_model_path
    from distillspec.tiny import tiny_model

    work.mkdir(parents=True, exist_ok=True)
    if head is None:  # a tiny stand-in, saved as a study would keep it (drafts/<run>/student beside data/)
        model = tiny_model("llama", seed=3, init_std=0.2, hidden_size=64, num_layers=8)
        target = str(work / "target")
        model.save_pretrained(target)
        load_tokenizer("smollm2-135m-instruct").save_pretrained(target)
        torch.manual_seed(4)
        made = EagleHead(model, features="fused")
        with torch.no_grad():
            for p in made.parameters():
                p.add_(0.05 * torch.randn_like(p))  # norms away from 1: a swapped norm would show
        head = str(work / "study" / "drafts" / "head" / "student")
        save_head(made, head)
        vocab = sorted(set(range(0, 49152, 17)) | {0, 1, 2})[:3000]
        (work / "study" / "data").mkdir(parents=True, exist_ok=True)
        (work / "study" / "data" / "draft_vocab.json").write_text(json.dumps({"ids": vocab}))
    target = target or read_head_meta(head).get("teacher")
    out = export_draft(head, work / "export", engine="vllm", target=target, gamma=3, force=True)
    model, _ = load_model(resolve_model_path(target), dtype=torch.float32)
    loaded = load_head(head, model)
    vocab = head_vocab(Path(head))  # the vocabulary the export wrote as its draft vocabulary
    if vocab is not None:
        loaded.reduce_vocab(vocab)
    ids = torch.randint(100, 40000, (1, 24), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        _, features = target_features(model, ids, mask, logits_to_keep=-1, layers=loaded.feature_layers)
        pairs = ids[:, 1:]  # token t+1 beside the feature at t, as the decoder pairs them
        logits = loaded(pairs, features[:, :-1], attention_mask=torch.ones_like(pairs),
                        position_ids=torch.arange(pairs.shape[1])[None]).logits
    save_file({"ids": pairs.contiguous(), "features": features[:, :-1].contiguous(), "logits": logits.contiguous()},
              str(work / "reference.safetensors"))
    return {"stage": "reference", "export": str(out), "target": target, "logits": list(logits.shape)}


def speculators(work: Path) -> dict:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from speculators.models.eagle3 import Eagle3DraftModel, Eagle3SpeculatorConfig

    export = work / "export"
    config = Eagle3SpeculatorConfig.from_pretrained(export)
    config.transformer_layer_config._attn_implementation = "eager"  # noqa: SLF001 (dense masks on CPU)
    model = Eagle3DraftModel.from_pretrained(export, config=config).float().eval()
    target = Path(config.speculators_config.verifier.name_or_path)
    for file in sorted(target.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            if "model.embed_tokens.weight" in f.keys():
                model.embed_tokens.weight.data.copy_(f.get_tensor("model.embed_tokens.weight"))
    ref = load_file(str(work / "reference.safetensors"))
    ids, features, expected = ref["ids"], ref["features"].float(), ref["logits"].float()
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        # its first drafting step, module by module (Eagle3DraftModel.forward, one TTT step)
        hidden = torch.cat([model.embed_tokens(ids), model.fc(features)], -1)
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        hidden = model.layers[0](hidden, attention_mask=mask, position_ids=positions,
                                 position_embeddings=model.rotary_emb(hidden, positions))
        logits = model.lm_head(model.norm(hidden))
        tokens = model(features, ids, torch.zeros_like(ids), position_ids=positions, ttt_steps=1)[0]
    diff = float((logits - expected).abs().max())
    same_argmax = float((logits.argmax(-1) == expected.argmax(-1)).float().mean())
    same_tokens = float((tokens == expected.argmax(-1)).float().mean())
    d2t = getattr(model, "d2t", None)
    return {"stage": "speculators", "max_abs_logit_diff": diff, "logit_scale": float(expected.abs().max()),
            "same_argmax": same_argmax, "forward_same_tokens": same_tokens,
            "draft_vocab": int(model.draft_vocab_size), "d2t": d2t is not None,
            "ok": diff <= 1e-3 * max(1.0, float(expected.abs().max())) and same_argmax == 1.0 and same_tokens == 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("reference", "speculators"))
    parser.add_argument("--work", type=Path, default=Path("exports/speculators_check"))
    parser.add_argument("--head", help="a saved fused head (default: a tiny random one)")
    parser.add_argument("--target", help="the head's target (with --head; default: its training teacher)")
    args = parser.parse_args()
    result = reference(args.work, args.head, args.target) if args.stage == "reference" else speculators(args.work)
    print(json.dumps(result))
    sys.exit(0 if result.get("ok", True) else 1)


if __name__ == "__main__":
    main()
