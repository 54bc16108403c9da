"""Batched SD throughput at real model shapes on a GPU: random-init Qwen3-4B-shaped target, Qwen3-0.6B-shaped draft.

    python benchmarks/gpu_decoder_bench.py --samplings T1 --new-tokens 128 --check-greedy-fp32   # as in the README
    python benchmarks/gpu_decoder_bench.py --samplings T1 --new-tokens 128 --draft-layers 4      # a shallow draft
    ... --cudnn-sdpa off        # without torch's cuDNN attention (README: it dominated decoding time on an H100)

No checkpoints are needed (a GPU machine without hub access can download none): weights are random, so acceptance is
whatever two random models give and the speedups are not those of trained pairs. What this measures is the
decoder itself: tokens/s against the target's own cached generate at each batch size, the draft/target cost
ratio c, tau and alpha, and the cost of the machinery (wall time / model forward time). Prompts have one length,
and EOS is disabled, so every row decodes exactly --new-tokens tokens. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate

# The published Qwen3 configurations (hidden, layers, heads, kv heads, MLP width); head_dim 128, vocab 151,936.
SHAPES = {
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=9728),
    "qwen3-1.7b": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       intermediate_size=6144),
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       intermediate_size=3072),
}
SAMPLINGS = {"greedy": SamplingConfig(greedy=True), "T1": SamplingConfig(temperature=1.0)}


def random_model(shape: str, dtype: torch.dtype, seed: int, layers: int | None = None):
    dims = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    cfg = Qwen3Config(vocab_size=151936, head_dim=128, tie_word_embeddings=True, max_position_embeddings=4096,
                      eos_token_id=None, pad_token_id=0, **dims)
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id = None
    return model.eval()


def sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


@torch.inference_mode()
def target_generate(target, prompts: torch.Tensor, new_tokens: int, sampling: SamplingConfig):
    """The target's own cached decoding (transformers generate): the baseline SD must beat."""
    start = sync_time()
    out = target.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, pad_token_id=0, **sampling.generate_kwargs())
    return out[:, prompts.shape[1]:], sync_time() - start


def run_sd(target, draft, prompts: torch.Tensor, new_tokens: int, sampling: SamplingConfig, gamma: int):
    start = sync_time()
    res = speculative_generate(target, draft, prompts.tolist(), gamma=gamma, max_new_tokens=new_tokens,
                               sampling=sampling, eos_token_id=[], record=False, seed=0,
                               timed=True)  # c and the overhead (syncs the device per forward)
    return res, sync_time() - start


@torch.inference_mode()
def forward_costs(model, prompt_len: int, batch: int, steps: int = 30) -> dict:
    """Milliseconds per one-token cached decode forward, with no attention mask, a 2-D all-ones mask, and a 2-D
    mask with holes (what the SD decoder passes after rejections): the fixed per-forward cost of the model code."""
    from transformers import DynamicCache

    ids = torch.randint(1, 151936, (batch, prompt_len), device="cuda")
    out = {}
    for kind in ("no mask", "2-D mask", "2-D mask with holes"):
        cache = DynamicCache(config=model.config)
        mask = torch.ones(batch, prompt_len, dtype=torch.long, device="cuda")
        if kind == "2-D mask with holes":
            mask[:, prompt_len // 2 : prompt_len // 2 + 5] = 0
        model(ids, attention_mask=None if kind == "no mask" else mask, past_key_values=cache, use_cache=True)
        token = ids[:, -1:]
        times = []
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device="cuda")], dim=1)
            start = sync_time()
            model(token, attention_mask=None if kind == "no mask" else mask, past_key_values=cache, use_cache=True)
            times.append(sync_time() - start)
        out[kind] = 1000 * sorted(times)[len(times) // 2]  # median ms
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="qwen3-4b", choices=list(SHAPES))
    ap.add_argument("--draft", default="qwen3-0.6b", choices=list(SHAPES))
    ap.add_argument("--draft-layers", type=int, default=None,
                    help="override the draft's depth (on a GPU at small batch the cost ratio c follows depth more "
                         "than width)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--samplings", nargs="+", default=list(SAMPLINGS), choices=list(SAMPLINGS))
    ap.add_argument("--cudnn-sdpa", choices=["on", "off"], default="on",
                    help="torch's cuDNN attention backend; 'off' leaves SDPA to flash/memory-efficient kernels "
                         "(cuDNN builds a plan per new key length, which decoding meets at every step)")
    ap.add_argument("--forward-costs", action="store_true",
                    help="only time one-token forwards of target and draft (ms, batch 1), with and without masks")
    ap.add_argument("--check-greedy-fp32", action="store_true",
                    help="greedy SD vs the target's greedy generate in fp32 (TF32 off), token for token, with the "
                         "small draft (alpha ~0: every token a correction) and the target as its own draft (alpha 1)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU (the CPU benchmark is specdec_bench.py).")

    torch.backends.cuda.enable_cudnn_sdp(args.cudnn_sdpa == "on")
    result = {"config": {**vars(args), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}, "runs": []}
    target = random_model(args.target, torch.bfloat16, seed=0)
    draft = random_model(args.draft, torch.bfloat16, seed=1, layers=args.draft_layers)
    gen = torch.Generator(device="cuda").manual_seed(0)
    if args.forward_costs:
        result["forward_ms"] = {"target": forward_costs(target, args.prompt_len, 1),
                                "draft": forward_costs(draft, args.prompt_len, 1)}
        print(json.dumps(result, indent=2))
        return
    for batch in args.batch_sizes:
        prompts = torch.randint(1, 151936, (batch, args.prompt_len), device="cuda", generator=gen)
        for sampling in SAMPLINGS.values():  # warm-up: kernels, allocator, both sampling paths
            run_sd(target, draft, prompts[:, :16], 32, sampling, args.gamma)
            target_generate(target, prompts[:, :16], 32, sampling)
        for name in args.samplings:
            sampling = SAMPLINGS[name]
            _, target_s = target_generate(target, prompts, args.new_tokens, sampling)
            res, sd_s = run_sd(target, draft, prompts, args.new_tokens, sampling, args.gamma)
            m = res.metrics
            tokens = batch * args.new_tokens
            result["runs"].append({
                "batch": batch, "sampling": name, "target_tokens_per_s": tokens / target_s,
                "sd_tokens_per_s": m.new_tokens / sd_s, "speedup": (m.new_tokens / sd_s) / (tokens / target_s),
                "alpha_tok": m.alpha_tok, "alpha_pos": m.alpha_pos, "tau": m.tau, "cost_ratio_c": m.cost_ratio_c,
                "predicted_tau": m.predicted_tau, "ideal_speedup": m.ideal_speedup, "overhead": m.overhead,
                "max_new_per_forward_target": m.max_new_per_forward_target,
                "max_new_per_forward_draft": m.max_new_per_forward_draft,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
            print(json.dumps(result["runs"][-1]), flush=True)
    if args.check_greedy_fp32:
        del target, draft
        torch.cuda.empty_cache()
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        target = random_model(args.target, torch.float32, seed=0)
        draft = random_model(args.draft, torch.float32, seed=1, layers=args.draft_layers)
        checks = []
        for batch in (1, 8):
            prompts = torch.randint(1, 151936, (batch, args.prompt_len), device="cuda", generator=gen)
            ref, _ = target_generate(target, prompts, 64, SAMPLINGS["greedy"])
            for name, proposer in (("0.6b-shaped draft", draft), ("the target as its own draft", target)):
                res, _ = run_sd(target, proposer, prompts, 64, SAMPLINGS["greedy"], args.gamma)
                same = [res.sequences[i] == ref[i].tolist() for i in range(batch)]
                checks.append({"draft": name, "batch": batch, "rows_identical": sum(same), "rows": batch,
                               "alpha_tok": res.metrics.alpha_tok, "tau": res.metrics.tau})
                print(json.dumps(checks[-1]), flush=True)
        result["greedy_fp32_identity"] = checks
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
