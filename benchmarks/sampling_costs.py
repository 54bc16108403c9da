"""What sampling costs each side, and the published speed rows predicted again with it.

    python benchmarks/sampling_costs.py --configs configs/offline_gsm8k_kinds.yaml configs/offline_cnndm_kinds.yaml

Target-only `generate` turns logits into a token at every step through transformers' logits processors (top-p
sorts the whole vocabulary); the decoder does it once per step for all its positions (sampling.nucleus_probs looks
among the top candidates first). Cost models saved before `measure_step_costs(sampling=...)` timed forwards only.
This times, on this machine, each study's sampling on the target's logits of 4 of its training prompts
(speed.sampling_steps: generate's draw per token, the decoder's over k positions, a drafted token's over the
draft's vocabulary), adds it to every published timed row's saved step costs, and prints per row the prediction
without and with it beside the measured speedup (the published alpha, blocks and gamma), and how many rows each
predicts within 10%. Time it with nothing else running.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from distillspec.threads import set_threads

set_threads("timing")  # before torch loads: OpenMP reads its waiting policy once

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from distillspec.data import render_prompts  # noqa: E402
from distillspec.pair import load_target  # noqa: E402
from distillspec.sampling import GREEDY  # noqa: E402
from distillspec.speed import (StepCosts, median_seconds_each, sampling_costs, sampling_steps,  # noqa: E402
                               text_logits)
from distillspec.study.preset import StudyConfig  # noqa: E402
from distillspec.study.rundir import RunPaths, default_run_dir, load_prompt_file  # noqa: E402
from distillspec.study.tables import speed_summary  # noqa: E402


def published(name: str) -> tuple[dict, dict]:
    """A published study's timing rows and speed rows, per draft."""
    timing, rows = {}, {}
    for path in sorted(glob.glob(f"figures/{name}/records/*_timing.parquet")):
        draft = Path(path).name[: -len("_timing.parquet")]
        timing[draft] = pd.read_parquet(path)
        rows[draft] = json.loads(Path(path.replace("_timing.parquet", "_speed.json")).read_text())
    return timing, rows


def draft_vocabulary(cfg: StudyConfig, target, info: dict) -> int:
    """How many ids a drafted token's distribution spans: 0 for prompt lookup (no model), the study's cut
    vocabulary where it has one, else the target's."""
    if info["costs"]["draft_s"] == 0.0:
        return 0
    cut = RunPaths(default_run_dir(cfg)).draft_vocab
    return len(json.loads(cut.read_text())["ids"]) if cfg.draft_vocab and cut.is_file() else target.config.vocab_size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args()
    lines = []
    for config in args.configs:
        cfg = StudyConfig.from_yaml(config)
        target, tok = load_target(cfg.for_decoding())
        train = render_prompts(tok, load_prompt_file(RunPaths(default_run_dir(cfg)).train_prompts))
        logits = text_logits(target, train[:4])
        timing, rows = published(cfg.name)
        timed = {}
        for draft, row in rows.items():
            timed[draft] = []
            for info in row.get("timed", []):
                if "costs" not in info:  # transformers' own prompt lookup: no cost model
                    timed[draft].append(info)
                    continue
                costs = StepCosts.from_dict(info["costs"])
                sampling = GREEDY if info["setting"].startswith("greedy") else cfg.sampling()
                steps = sampling_steps(sampling, logits, batch_size=costs.batch_size, max_k=costs.max_gamma + 1,
                                       draft_vocab=draft_vocabulary(cfg, target, info))
                with torch.inference_mode():
                    sampled = sampling_costs(median_seconds_each(steps, args.reps))
                timed[draft].append({**info, "costs": {**info["costs"], **sampled}})
        before = speed_summary(timing, {d: r.get("timed", []) for d, r in rows.items()})
        after = speed_summary(timing, timed)
        table = before[["draft", "setting", "gamma", "speedup"]].assign(
            forwards_only=before["predicted_speedup"], with_sampling=after["predicted_speedup"])
        table = table[(table["gamma"] > 0) & table["forwards_only"].notna()]  # drafted rows with a cost model
        for col in ("forwards_only", "with_sampling"):
            table[f"{col}_within_10%"] = (table[col] / table["speedup"] - 1).abs() <= 0.10
        print(f"\n{cfg.name}\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        lines.append(f"{cfg.name}: within 10% forwards only {int(table['forwards_only_within_10%'].sum())} of "
                     f"{len(table)} drafted rows, with sampling {int(table['with_sampling_within_10%'].sum())}")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
