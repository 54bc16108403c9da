"""Peak memory and time of forward+backward: chunked fused distillation loss vs the naive full-tensor version.

    python benchmarks/loss_bench.py --positions 8192 --vocab 151936 --hidden 1024   # Qwen3's vocabulary (GPU)
    python benchmarks/loss_bench.py --positions 2048                                # fits a 24 GiB CPU box

--chunk (default 256) is the chunked variant's positions per chunk: its peak is O(chunk x vocab).

Each variant runs in a fresh subprocess so peak RSS (CPU) or peak CUDA memory is its own. Prints one JSON object.
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(args) -> dict:
    import torch

    from distillspec.losses import chunked_distill_loss, naive_distill_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device="cpu").manual_seed(0)
    n, v, h = args.positions, args.vocab, args.hidden
    # In-place init (no temporaries), so the process peak before the loss is just these inputs.
    h_s = torch.randn(1, n, h, generator=gen).to(device).requires_grad_(True)
    h_t = torch.randn(1, n, h, generator=gen).to(device)
    w_s = torch.randn(v, h, generator=gen).mul_(0.02).to(device).requires_grad_(True)
    w_t = torch.randn(v, h, generator=gen).mul_(0.02).to(device)
    mask = torch.ones(1, n, dtype=torch.bool, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**30
    else:
        base = _rss_gib()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        if args.variant == "naive":
            loss = naive_distill_loss(h_s @ w_s.T, h_t @ w_t.T, mask, divergence=args.divergence)
        else:
            loss = chunked_distill_loss(h_s, h_t, w_s, w_t, mask, divergence=args.divergence,
                                        chunk_size=args.chunk).loss
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        h_s.grad = w_s.grad = None
    if device.type == "cuda":
        total = torch.cuda.max_memory_allocated() / 2**30
        peak = total - base
    else:
        total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        peak = total - base
    # peak_gib: memory the loss itself needed above its inputs (weights, hidden states); total_peak_gib: process peak.
    return {"variant": args.variant, "peak_gib": peak, "total_peak_gib": total, "seconds": min(times),
            "device": device.type}


def _rss_gib() -> float:
    """Current resident set size of this process (Linux), GiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**30


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--divergence", default="jsd")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variant", choices=["naive", "chunked"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_one(args)))
        return
    results = {"config": vars(args)}
    for variant in ("naive", "chunked"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        results[variant] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}
    if "peak_gib" in results["naive"] and "peak_gib" in results["chunked"]:
        results["memory_ratio"] = results["chunked"]["peak_gib"] / results["naive"]["peak_gib"]
        results["time_ratio"] = results["chunked"]["seconds"] / results["naive"]["seconds"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
