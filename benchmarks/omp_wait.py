"""OpenMP waiting (ACTIVE / PASSIVE) and thread counts, on a quiet CPU and beside one busy process, for the work
each entry point does: a short target-only `generate` (latency-bound decoding: the timing stage, SD), and the
forward + backward of a training batch (the training stages), both in fp32. Each cell runs in a fresh process, since the
settings take effect only before torch starts. Prints one row per (work, threads, policy, neighbour) with the
median of --repeats runs.

    python benchmarks/omp_wait.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORK = {
    "generate": """
import time, torch
from distillspec.models import load_model
model, tok = load_model("smollm2-135m-instruct", dtype=torch.float32)
ids = tok.apply_chat_template([{"role": "user", "content": "What is 12 times 7? Explain."}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
model.generate(**ids, max_new_tokens=4, do_sample=False)  # warm-up
times = []
for _ in range(3):
    t = time.perf_counter()
    model.generate(**ids, max_new_tokens=32, do_sample=False)
    times.append(time.perf_counter() - t)
print(min(times))
""",
    "train_step": """
import time, torch
from distillspec.models import load_model, draft_from_teacher
teacher, tok = load_model("smollm2-135m-instruct", dtype=torch.float32)
student = draft_from_teacher(teacher, 4, "first").train()
opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
ids = torch.randint(100, 20000, (4, 128))
def step():
    loss = student(ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
step()
times = []
for _ in range(2):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(min(times))
""",
}


def cell(work: str, threads: int, policy: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": policy, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", WORK[work]], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", nargs="+", default=list(WORK), choices=list(WORK))
    args = ap.parse_args()
    rows = []
    for neighbour in ("quiet", "busy"):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour == "busy" else None
        try:
            for work in args.work:
                for threads in (1, 2):
                    for policy in ("ACTIVE", "PASSIVE"):
                        if threads == 1 and policy == "PASSIVE":
                            continue  # one thread waits for no other
                        seconds = statistics.median(cell(work, threads, policy) for _ in range(args.repeats))
                        rows.append({"work": work, "threads": threads, "policy": policy, "neighbour": neighbour,
                                     "seconds": round(seconds, 3)})
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()


if __name__ == "__main__":
    main()
