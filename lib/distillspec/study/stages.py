"""The study's four stages as functions, one per notebook (01 data, 02 distill, 03 evaluate, 04 analyze), so the
notebooks stay thin and everything they do is testable. Where each stage writes: rundir.RunPaths; what 04 writes in
words: results.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..atomic import read_parquet, write_json, write_parquet, write_text
from ..data import load_raw, render_prompts, task_spec, token_lengths
from ..eagle import is_head, saved_marker
from ..draft_vocab import check_draft_vocab, choose_draft_vocab, teacher_token_counts
from ..errors import require
from ..evaluate import expected_acceptance
from ..models import count_parameters, load_tokenizer, reduce_draft_vocab
from ..pair import load_draft, load_target
from ..runtime import machine
from ..specdec import speculative_generate
from ..speed import decoding_shape, measure_step_costs, target_tokens_per_s, time_decoding
from ..trainlog import TRAIN_LOG, DistillResult, read_log
from ..training_settings import check_settings, clear_training_output
from .preset import StudyConfig
from .report import (acceptance_by_entropy, plot_acceptance_vs_entropy, plot_training_curves, plot_warm_curve,
                     speed_summary, summary_table)
from .handoff import check_retrained_warm_start
from .manifest import run_damage, seal
from .results import results_markdown, seeded_lead
from .rundir import (BASELINE, RunPaths, draft_groups, draft_names, figure_paths, fingerprint, finished_drafts,
                     load_prompt_file, published_records, run_names, save_prompts)
from .seeds import bins_over_seeds


def prepare_data(cfg: StudyConfig, run_dir: str | Path) -> dict:
    """01: the training and held-out evaluation prompt sets (disjoint splits) and their statistics."""
    paths = RunPaths(Path(run_dir))
    tok = load_tokenizer(cfg.teacher)
    train, held_out = cfg.train_prompts(tok), cfg.eval_prompts(tok)
    save_prompts(train, paths.train_prompts)
    save_prompts(held_out, paths.eval_prompts)
    summary = {
        "task": cfg.task, "train_split": cfg.train_split, "eval_split": cfg.eval_split,
        "n_train": len(train), "n_eval": len(held_out),
        "train_prompt_tokens": [len(x) for x in render_prompts(tok, train)],
        "eval_prompt_tokens": [len(x) for x in render_prompts(tok, held_out)],
        "example_prompt": tok.decode(render_prompts(tok, held_out.select([0]))[0]),
    }
    if cfg.task == "cnndm":  # the length filter's effect on the evaluation split
        raw = load_raw(cfg.task, cfg.eval_split, cfg.data_source)
        lengths = token_lengths(tok, raw[task_spec(cfg.task).text_field])
        summary["article_tokens_before_filter"] = lengths
        summary["kept_by_filter"] = int(sum(n <= cfg.max_article_tokens for n in lengths))
    write_json(summary, paths.data_summary)
    return summary


def _retrain_fix(cfg: StudyConfig, name: str) -> str:
    return (f"Train '{name}' again from scratch (python -m distillspec train --config <{cfg.name} preset> --draft "
            f"{name} --retrain), or use a new --run-dir.")


def forget_draft(cfg: StudyConfig, run_dir: str | Path, name: str) -> None:
    """Remove a draft's training output, settings and records (and 04's table, made with them): the next train
    starts it from scratch and the next run evaluates it again. A warm-started baseline is refused: every other
    draft of the run started from it."""
    paths = RunPaths(Path(run_dir))
    _known_drafts(cfg, [name])
    require(not (name == BASELINE and cfg.warm_start is not None),
            f"The warm-started baseline of {paths.root} is where every other draft of the run started: training it "
            "again would leave them describing another start. Use a new --run-dir (or run --force).")
    clear_training_output(paths.draft_dir(name))
    for record in published_records(paths, name).values():
        if record.parent == paths.records:
            record.unlink(missing_ok=True)
    paths.results.unlink(missing_ok=True)


def train_draft(cfg: StudyConfig, run_dir: str | Path, name: str, *, retrain: bool = False, **overrides):
    """02: distil one draft of the study (its overrides from the config, then any given here); resumable with the
    same settings (a draft trained with others is refused, naming the keys); retrain: train it again from scratch
    (forget_draft first). With a `warm_start`, the baseline is trained too (warm_start.py) and every other run
    starts from it."""
    paths = RunPaths(Path(run_dir))
    if retrain:
        forget_draft(cfg, run_dir, name)
    if name == BASELINE and cfg.warm_start is not None:
        return warm_start(cfg, run_dir, **overrides)
    require(name in run_names(cfg), f"Unknown training run '{name}'; this study's runs are {list(run_names(cfg))}"
            + (" (and the baseline, trained by its warm_start)." if cfg.warm_start is not None else "."))
    run_cfg = cfg.run_config(name, **overrides)
    if cfg.warm_start is not None:
        require(saved_marker(paths.student(BASELINE)).is_file(),
                f"Run '{name}' starts from the study's warm-started baseline, which is not trained yet: run 02 with "
                f"run_name='{BASELINE}' first (the pipeline does), or import nothing and run the study again.")
        run_cfg = run_cfg.replace(student=str(paths.student(BASELINE)))
    check_settings(paths.draft_dir(name), run_cfg.to_dict(), _retrain_fix(cfg, name))
    if run_cfg.draft_kind == "eagle":  # a feature head: its own loop (head_training.py), on the teacher's text
        from ..head_training import train_head

        target, tok = load_target(run_cfg)
        vocab = draft_vocab(cfg, run_dir, target, tok)
        return train_head(run_cfg, paths.draft_dir(name), target=target, tokenizer=tok,
                          prompts=render_prompts(tok, load_prompt_file(paths.train_prompts)),
                          draft_vocab_ids=None if vocab is None else vocab["ids"],
                          text_path=paths.teacher_text(run_cfg.train_max_new_tokens))
    from ..distillation import distill  # TRL: only 02 pays for importing it

    return distill(run_cfg, paths.draft_dir(name), dataset=load_prompt_file(paths.train_prompts))


def warm_start(cfg: StudyConfig, run_dir: str | Path, **overrides):
    """02 for the baseline of a study with `warm_start`: the derived draft trained on the teacher's text, with its
    curve (alpha_pos on held-out prompts every eval_every steps) in its train log; resumable. When the baseline's
    records were imported (a study in parts: a model cannot be published), the draft is trained again in
    retrained/ for the runs to start from, checked against the records' log, which stays the baseline's."""
    paths = RunPaths(Path(run_dir))
    imported = paths.manifest(BASELINE).is_file()
    again = paths.warm_retrain
    if not imported and not again.is_dir():
        return _train_warm_start(cfg, paths, paths.draft_dir(BASELINE), overrides)
    finished = saved_marker(again / "student").is_file()  # trained before a refused check: kept, not trained again
    result = (DistillResult(again / "student", again, again / TRAIN_LOG, None) if finished
              else _train_warm_start(cfg, paths, again, overrides))
    if imported:
        print(check_retrained_warm_start(paths.train_log(BASELINE), result.log_path))
        os.replace(result.student_dir, paths.student(BASELINE))  # retrained/ stays: the records are not its own
        return DistillResult(paths.student(BASELINE), again, result.log_path, result.resumed_from)
    # the imported records were deleted to evaluate this draft instead: its log becomes the baseline's
    os.replace(result.log_path, paths.train_log(BASELINE))
    os.replace(result.student_dir, paths.student(BASELINE))
    shutil.rmtree(again)
    return DistillResult(paths.student(BASELINE), paths.draft_dir(BASELINE), paths.train_log(BASELINE),
                         result.resumed_from)


def _train_warm_start(cfg: StudyConfig, paths: RunPaths, out: Path, overrides: dict):
    from ..warm_start import WarmStart, train_warm_start

    from ..warm_start import warm_settings

    run_cfg = cfg.run_config(**overrides)
    warm = WarmStart.of(cfg.warm_start)
    check_settings(out, warm_settings(run_cfg, warm), _retrain_fix(cfg, BASELINE))
    target, tok = load_target(run_cfg)
    vocab = draft_vocab(cfg, paths.root, target, tok)
    return train_warm_start(run_cfg, warm, out, target=target, tokenizer=tok,
                            prompts=render_prompts(tok, load_prompt_file(paths.train_prompts)),
                            eval_prompts=render_prompts(tok, load_prompt_file(paths.eval_prompts)), gamma=cfg.gamma,
                            draft_vocab_ids=None if vocab is None else vocab["ids"],
                            text_path=paths.teacher_text(warm.text_tokens))


def run_settings(cfg: StudyConfig, name: str) -> dict:
    """What training run `name` changes from the base recipe (the baseline of a warm-started study: its warm
    start's settings), for the workbook to show."""
    if name == BASELINE and cfg.warm_start is not None:
        return {**cfg.warm_start, "rollout": "teacher text (warm start)"}
    require(name in run_names(cfg), f"Unknown training run '{name}'; this study's runs are {list(run_names(cfg))}.")
    return cfg.run_overrides()[name]


def _evaluated(paths: RunPaths, name: str, student: Path | None) -> bool:
    """This draft's records are complete, intact (its manifest) and newer than its student (a retrained draft is
    evaluated again). A damaged draft is named, and evaluated again when its model is here."""
    if not paths.manifest(name).is_file():
        return False
    damaged = run_damage(paths, name)
    if damaged:
        print(f"draft '{name}': its records are damaged ({'; '.join(damaged)}); evaluating it again")
        require(student is None or saved_marker(student).is_file(),
                f"Draft '{name}' has damaged records ({'; '.join(damaged)}) and no trained student in {paths.root} "
                "to evaluate again: import it again (--results-from its published records) or train it here.")
        return False
    if student is None or not saved_marker(student).is_file():  # baseline, or results imported (handoff)
        return True
    if name == BASELINE and paths.warm_retrain.is_dir():  # imported records; the warm draft trained again for them
        return True
    return paths.manifest(name).stat().st_mtime >= saved_marker(student).stat().st_mtime


def _known_drafts(cfg: StudyConfig, names: list[str]) -> list[str]:
    unknown = sorted(set(names) - set(draft_names(cfg)))
    require(not unknown, f"Unknown drafts {unknown}; this study's drafts are {draft_names(cfg)}.")
    return list(names)


def evaluate_drafts(cfg: StudyConfig, run_dir: str | Path, names: list[str] | None = None) -> pd.DataFrame:
    """03: batched SD of each draft (default: the undistilled baseline and every distilled draft) against the
    target on the held-out prompts; writes per-token/per-step records and a speed row per draft, then
    speed.parquet with one row per finished draft. A finished draft is not evaluated again, so an interrupted
    evaluation resumes at the next draft."""
    paths = RunPaths(Path(run_dir))
    names = draft_names(cfg) if names is None else _known_drafts(cfg, names)
    drafts = {n: _draft_source(cfg, paths, n) for n in names}
    todo = [n for n, path in drafts.items() if not _evaluated(paths, n, path)]
    for name in todo:
        path = drafts[name]
        require(path is None or path.is_dir(), f"Draft '{name}' has no trained student at {path}: run 02 first.")
    decoding = cfg.for_decoding()  # eval_precision, e.g. bf16 on a CPU with bf16 instructions
    target, tok = load_target(decoding)
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))
    vocab = draft_vocab(cfg, run_dir, target, tok) if todo else None
    target_tps = _target_speed(cfg, paths, target, tok, prompts) if todo else None
    for name in tqdm(todo, desc="drafts"):
        started = time.perf_counter()
        draft = load_draft(decoding, target, tok, drafts[name])  # None: the baseline (`student`, or derived)
        # on the draft's own samples (transformers generate), with the head it was trained with; a feature head
        # cannot write alone (it needs the target's hidden states), so it has no own samples
        own = None if is_head(draft) else expected_acceptance(
            target, draft, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.eval_batch_size, progress=False)
        params = count_parameters(draft)  # as trained (a cut head adds untied rows, it does not make a new draft)
        if vocab is not None:  # SD with the head cut to the ids the teacher writes (lossless: q = 0 elsewhere)
            draft = cut_vocab(draft, vocab["ids"], tok.eos_token_id)
        tokens, steps, tokens_per_s = _decode(cfg, target, draft, tok, prompts, name)
        write_parquet(tokens, paths.tokens(name))
        write_parquet(steps, paths.steps(name))
        row = {"draft": name, "draft_params": params, "sd_tokens_per_s": tokens_per_s,
               "target_tokens_per_s": target_tps, "speedup": tokens_per_s / target_tps,
               "own_sample_expected_accept": own.expected_accept if own else float("nan"),
               "own_sample_draft_entropy": own.draft_entropy if own else float("nan"),
               "sd_expected_accept_t1": float(tokens["expected_accept_t1"].mean())}
        if cfg.speed:
            timing, row["timed"] = _time_against_target(cfg, paths, target, draft, tok, prompts, name)
            write_parquet(timing, paths.timing(name))
        row["eval_s"] = time.perf_counter() - started  # this draft's 03 on this machine (wall seconds)
        row["machine"] = machine()
        row["fingerprint"] = fingerprint(cfg, run_dir)  # config + prompt sets: checked when results are imported
        write_json(row, paths.speed_row(name))
        seal(paths, name)  # the manifest, written last: marks this draft as done
        paths.results.unlink(missing_ok=True)  # 04 ran without this draft's new records
    speed = speed_table(cfg, run_dir)
    write_parquet(speed, paths.speed_table)
    return speed


def retime_drafts(cfg: StudyConfig, run_dir: str | Path, names: list[str]) -> pd.DataFrame:
    """03's timing again, on this machine, for drafts already evaluated (their acceptance records stay): the step
    costs, the chosen gamma, and SD against the target alone. For records timed elsewhere or by an older rule; it
    needs the trained students in the run directory. 04's table is removed, so the next `run` rebuilds it."""
    require(cfg.speed, f"The preset '{cfg.name}' has no `speed` settings: there is nothing to time.")
    paths = RunPaths(Path(run_dir))
    names = _known_drafts(cfg, names)
    require(names, "No drafts named to time again.")
    pending = [n for n in names if not paths.manifest(n).is_file() or run_damage(paths, n)]
    require(not pending, f"Drafts {pending} are not evaluated yet in {paths.root}: run 03 first "
            "(python -m distillspec run --drafts ...), which times them too.")
    absent = [n for n in names if n not in drafts_here(cfg, run_dir, names)]
    require(not absent, f"Drafts {absent} have no trained student in {paths.root / 'drafts'} (imported records "
            "only?): timing needs the model. Train them here, or retime where they were trained.")
    target, tok = load_target(cfg.for_decoding())
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))
    for name in tqdm(names, desc="drafts"):
        draft = decoding_draft(cfg, run_dir, target, tok, name)
        timing, timed = _time_against_target(cfg, paths, target, draft, tok, prompts, name)
        write_parquet(timing, paths.timing(name))
        write_json({**json.loads(paths.speed_row(name).read_text()), "timed": timed, "timed_on": machine()},
                   paths.speed_row(name))
        seal(paths, name)
    paths.results.unlink(missing_ok=True)  # 04 ran on the old timings
    return decoding_speed(cfg, run_dir, names)


def _target_speed(cfg: StudyConfig, paths: RunPaths, target, tok, prompts) -> float:
    """Target-only tokens/s on the held-out prompts, measured once per machine and reused by the run's later drafts;
    measured again when the run directory has moved to another machine (or kept no machine: an older run)."""
    here = machine()
    if paths.target_speed.is_file():
        saved = json.loads(paths.target_speed.read_text())
        if saved.get("machine") == here:
            return saved["tokens_per_s"]
        where = saved.get("machine", "an unrecorded machine")
        print(f"target-only speed in {paths.target_speed} was measured on {where}; measuring it again here ({here})")
    tps = target_tokens_per_s(target, tok, prompts, batch_size=cfg.eval_batch_size,
                              max_new_tokens=cfg.max_new_tokens, sampling=cfg.sampling(), seed=cfg.seed)
    write_json({"tokens_per_s": tps, "n_prompts": len(prompts), "batch_size": cfg.eval_batch_size, "machine": here},
               paths.target_speed)
    return tps


def draft_vocab(cfg: StudyConfig, run_dir: str | Path, target=None, tok=None) -> dict | None:
    """The reduced draft vocabulary of this run (config draft_vocab), chosen on first use and kept in
    data/draft_vocab.json: the ids the teacher writes most in its answers to the first `draft_vocab_prompts`
    training prompts (study sampling), with how many it saw and the share of its tokens they cover. Checked against
    the tokenizer and the held-out prompts (EOS and the chat template's markers must be kept). None: full heads."""
    if cfg.draft_vocab is None:
        return None
    paths = RunPaths(Path(run_dir))
    if not paths.draft_vocab.is_file():
        if target is None:
            target, tok = load_target(cfg.for_decoding())
        train = load_prompt_file(paths.train_prompts)
        prompts = render_prompts(tok, train.select(range(min(cfg.draft_vocab_prompts, len(train)))))
        counts = teacher_token_counts(target, tok, prompts, sampling=cfg.sampling(),
                                      max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size,
                                      seed=cfg.data_seed)
        ids = choose_draft_vocab(counts, tok, cfg.draft_vocab)
        kept, total = set(ids), sum(counts.values())
        write_json({"size": len(ids), "requested": cfg.draft_vocab, "n_prompts": len(prompts),
                    "distinct_ids_seen": len(counts), "teacher_tokens": total,
                    "coverage": sum(n for i, n in counts.items() if i in kept) / max(1, total), "ids": ids},
                   paths.draft_vocab)
    vocab = json.loads(paths.draft_vocab.read_text())
    tok = tok if tok is not None else load_tokenizer(cfg.teacher)
    check_draft_vocab(vocab["ids"], tok, render_prompts(tok, load_prompt_file(paths.eval_prompts)))
    return vocab


def _draft_source(cfg: StudyConfig, paths: RunPaths, name: str) -> Path | None:
    """Where draft `name` is loaded from: its trained student, or None for the baseline (`student`, or derived)
    unless the study warm-starts it."""
    return None if name == BASELINE and cfg.warm_start is None else paths.student(name)


def drafts_here(cfg: StudyConfig, run_dir: str | Path, names: list[str]) -> list[str]:
    """The named drafts whose model this run holds, in the order given: a draft imported from another machine
    (--results-from) has its records only."""
    paths = RunPaths(Path(run_dir))
    return [n for n in names if (source := _draft_source(cfg, paths, n)) is None or saved_marker(source).is_file()]


def decoding_draft(cfg: StudyConfig, run_dir: str | Path, target, tok, name: str, *, full_head: bool = False):
    """Draft `name` of the run as 03 decodes with it (target from load_target(cfg.for_decoding())): its head cut to
    the run's draft vocabulary when the config sets one, unless full_head. For benchmarks on a finished run."""
    draft = load_draft(cfg.for_decoding(), target, tok, _draft_source(cfg, RunPaths(Path(run_dir)), name))
    vocab = None if full_head else draft_vocab(cfg, run_dir, target, tok)
    return draft if vocab is None else cut_vocab(draft, vocab["ids"], tok.eos_token_id)


def cut_vocab(draft, ids: list[int], eos_token_id):
    """The draft scoring only these token ids: a standalone draft's head cut (reduce_draft_vocab), or a feature
    head reading only these rows of the target's LM head."""
    return draft.reduce_vocab(ids) if is_head(draft) else reduce_draft_vocab(draft, ids, eos_token_id)


def _time_against_target(cfg: StudyConfig, paths: RunPaths, target, draft, tok, prompts, name: str
                         ) -> tuple[pd.DataFrame, list[dict]]:
    """Each `speed` setting: the step costs on this machine, the draft length (fixed, or 'auto': the cost model's
    best for the acceptance of a short pilot on training prompts, then the never-slower check: SD with that gamma
    timed against the target on max(batch, speed_pilot_prompts) training prompts, gamma 0 (the target alone) unless
    it was faster), then SD and target-only timed on the first `speed_prompts` held-out prompts. Returns the timing
    rows and, per setting, how its gamma was chosen."""
    timed = prompts[: cfg.speed_prompts]
    train = render_prompts(tok, load_prompt_file(paths.train_prompts))
    pilot = train[: cfg.speed_pilot_prompts]
    frames, chosen, pilot_alphas = [], [], {}
    for setting, sampling in zip(cfg.speed, cfg.speed_settings()):
        batch = setting.get("batch_size", 1)
        label = f"{'greedy' if sampling.greedy else f'T={sampling.temperature}'}, batch {batch}"
        context, left_pad = decoding_shape(timed, batch, cfg.max_new_tokens)
        costs = measure_step_costs(target, draft, batch_size=batch, context=context, max_gamma=cfg.speed_max_gamma,
                                   left_pad=left_pad)
        pilot_alpha = pilot_speedup = None
        gamma = cfg.speed_gamma
        if gamma == "auto":  # the pilot's acceptance depends on the sampling, not the batch size: run it once
            if sampling not in pilot_alphas:
                pilot_alphas[sampling] = speculative_generate(
                    target, draft, pilot, gamma=cfg.speed_max_gamma, sampling=sampling,
                    max_new_tokens=cfg.max_new_tokens, eos_token_id=tok.eos_token_id, record=False,
                    seed=cfg.seed).metrics.alpha_pos
            pilot_alpha = pilot_alphas[sampling]
            gamma = costs.best_gamma(pilot_alpha)
            if gamma > 0:  # never slower: SD at this batch size timed on training prompts; not faster -> gamma 0
                trial = time_decoding(target, draft, tok, train[: max(batch, cfg.speed_pilot_prompts)], gamma=gamma,
                                      sampling=sampling, batch_size=batch, max_new_tokens=cfg.max_new_tokens,
                                      seed=cfg.seed)
                pilot_speedup = float((trial["sd_tokens"].sum() / trial["sd_s"].sum())
                                      / (trial["target_tokens"].sum() / trial["target_s"].sum()))
                gamma = gamma if pilot_speedup > 1.0 else 0
        frame = time_decoding(target, draft, tok, timed, gamma=gamma, sampling=sampling, batch_size=batch,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, progress=f"timing {name}, {label}")
        frame.insert(0, "setting", label)
        frames.append(frame)
        chosen.append({"setting": label, "gamma": gamma, "pilot_alpha": pilot_alpha, "pilot_speedup": pilot_speedup,
                       "costs": costs.as_dict()})
    return pd.concat(frames, ignore_index=True), chosen


def _decode(cfg: StudyConfig, target, draft, tok, prompts, name: str) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Batched SD over all prompts, eval_batch_size at a time: (per-token records, per-step records, tokens/s),
    rows numbered over the whole prompt set."""
    batch, tokens, steps, wall, new_tokens = cfg.eval_batch_size, [], [], 0.0, 0
    for start in tqdm(range(0, len(prompts), batch), desc=f"SD {name}"):
        res = speculative_generate(target, draft, prompts[start : start + batch], gamma=cfg.gamma,
                                   max_new_tokens=cfg.max_new_tokens, sampling=cfg.sampling(),
                                   eos_token_id=tok.eos_token_id, seed=cfg.seed + start, target_tokenizer=tok,
                                   draft_tokenizer=tok)
        for frames, df in ((tokens, res.tokens_df()), (steps, res.steps_df())):
            df["row"] += start
            frames.append(df)
        wall += res.metrics.wall_s
        new_tokens += res.metrics.new_tokens
    return pd.concat(tokens, ignore_index=True), pd.concat(steps, ignore_index=True), new_tokens / wall


def read_speed_rows(cfg: StudyConfig, run_dir: str | Path) -> dict[str, dict]:
    """Each finished draft's speed row as written (absent keys stay absent), in table order."""
    paths = RunPaths(Path(run_dir))
    return {n: json.loads(paths.speed_row(n).read_text()) for n in finished_drafts(cfg, run_dir)}


def speed_table(cfg: StudyConfig, run_dir: str | Path, rows: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per finished draft (its speed row: tokens/s, speedup, own-sample acceptance), in table order;
    rows: the speed rows when already read (read_speed_rows)."""
    rows = read_speed_rows(cfg, run_dir) if rows is None else rows
    return pd.DataFrame(list(rows.values())).drop(columns="fingerprint", errors="ignore")


def load_records(run_dir: str | Path, names: list[str]) -> tuple[dict, dict]:
    paths = RunPaths(Path(run_dir))
    tokens, steps = {}, {}
    for n in names:
        require(paths.tokens(n).is_file(), f"No records for draft '{n}' in {paths.root}: run 03 first.")
        tokens[n], steps[n] = read_parquet(paths.tokens(n)), read_parquet(paths.steps(n))
    return tokens, steps


def _results(cfg: StudyConfig, paths: RunPaths, rows: dict[str, dict], groups: dict[str, list[str]],
             logs: dict[str, pd.DataFrame], warm_log: pd.DataFrame | None, seed: int, csv: bool):
    """results.md over the drafts with speed rows (rows), the recipes' seeds in groups and the runs' training logs,
    returned with Table 1, the per-token records and the speed summary it was made from; csv: also write
    summary.csv, speed_summary.csv and the seeded lead's CSVs into the run, as 04 does."""
    names = list(rows)
    speed = speed_table(cfg, paths.root, rows)
    tokens, steps = load_records(paths.root, names)
    speed_by = {r["draft"]: {k: r[k] for k in speed.columns if k != "draft"} for _, r in speed.iterrows()}
    table = summary_table(steps, tokens, cfg.gamma, speed=speed_by, seed=seed)
    timing = load_timing(paths.root, names)
    speed_rows = decoding_speed(cfg, paths.root, names, timing, rows)
    if csv:
        write_text(table.to_csv(index=False), paths.summary)
        if len(speed_rows):
            write_text(speed_rows.to_csv(index=False), paths.speed_summary)
    lead = None
    if cfg.seeds is not None:
        lead = seeded_lead(cfg, paths if csv else None, groups, steps, tokens, timing, speed_rows, rows, logs, seed)
    return table, tokens, speed_rows, results_markdown(cfg, table, speed_rows, rows, lead, warm_log)


def _warm_log(cfg: StudyConfig, paths: RunPaths) -> pd.DataFrame | None:
    """The warm start's training log (its curve heads results.md), for a study with `warm_start`."""
    return read_log(paths.train_log(BASELINE)) if cfg.warm_start is not None else None


def interim_results(cfg: StudyConfig, run_dir: str | Path, seed: int = 0) -> str:
    """Where a study run in parts stands before every draft is in: results.md as 04 would write it over the drafts
    evaluated so far (each recipe's mean over the seeds it has), under a line naming the drafts still to come.
    Written to interim.md (published beside the records until 04's results.md replaces it)."""
    paths = RunPaths(Path(run_dir))
    rows = read_speed_rows(cfg, run_dir)
    require(bool(rows), f"No evaluated drafts in {paths.root}: run the study (or a part of it, with --drafts) first.")
    missing = [n for n in draft_names(cfg) if n not in rows]
    every = draft_groups(cfg)
    groups = {g: have for g, runs in every.items() if (have := [d for d in runs if d in rows])}
    logs = {n: read_log(paths.train_log(n)) for n in run_names(cfg) if n in rows}
    *_, results_md = _results(cfg, paths, rows, groups, logs, _warm_log(cfg, paths), seed, csv=False)
    partial = [f"{g} ({len(have)} of {len(every[g])})" for g, have in groups.items() if len(have) < len(every[g])]
    note = (f"**Interim**: {len(rows)} of {len(rows) + len(missing)} drafts evaluated; still to come: "
            f"{', '.join(missing) or 'none (run 04 for results.md)'}. "
            + (f"Recipes with some of their seeds so far: {', '.join(partial)}; their means and CIs are over those "
               "seeds only. " if partial else "")
            + "04 replaces this file with results.md once every draft is in.\n\n")
    text = note + results_md
    write_text(text, paths.interim)
    return text


@dataclass
class Analysis:
    """04's results: Table 1, acceptance per teacher-entropy bin, the per-token records, and the figures."""

    table: pd.DataFrame
    results_md: str  # results.md: the table with its settings, as published
    bins: pd.DataFrame
    tokens: dict[str, pd.DataFrame]
    figures: dict  # kind -> matplotlib Figure, saved under figures/
    speed: pd.DataFrame  # decoding speed per draft and setting (empty without `speed` settings)


def load_timing(run_dir: str | Path, names: list[str]) -> dict[str, pd.DataFrame]:
    """03's timing rows (SD against the target alone) of those of these drafts that were timed."""
    paths = RunPaths(Path(run_dir))
    return {n: read_parquet(paths.timing(n)) for n in names if paths.timing(n).is_file()}


def decoding_speed(cfg: StudyConfig, run_dir: str | Path, names: list[str], timing: dict[str, pd.DataFrame] | None = None,
                   rows: dict[str, dict] | None = None) -> pd.DataFrame:
    """03's timed runs of these drafts against the target alone, summarised (report.speed_summary); timing, rows:
    the drafts' timing rows and speed rows when already read (load_timing, read_speed_rows)."""
    paths = RunPaths(Path(run_dir))
    timing = load_timing(run_dir, names) if timing is None else timing
    rows = rows or {n: json.loads(paths.speed_row(n).read_text()) for n in timing}
    timed = {n: rows[n].get("timed", []) for n in timing}
    return speed_summary(timing, timed) if timing else pd.DataFrame()


def analyze(cfg: StudyConfig, run_dir: str | Path, seed: int = 0) -> Analysis:
    """04: Table 1 (with bootstrap CIs) as summary.csv and results.md, the per-bin acceptance table, and both
    figures (acceptance vs teacher entropy, training curves) under figures/. With `seeds`, results.md leads with
    each recipe's mean over seeds (seeds.py) and states which differences its CIs separate."""
    import matplotlib.pyplot as plt

    paths = RunPaths(Path(run_dir))
    rows = read_speed_rows(cfg, run_dir)
    require(bool(rows), f"No evaluated drafts in {paths.root}: run 03 first.")
    names = list(rows)
    groups = {g: runs for g, runs in draft_groups(cfg).items() if set(runs) <= set(names)}
    logs = {n: read_log(paths.train_log(n)) for n in run_names(cfg)}
    warm_log = _warm_log(cfg, paths)
    table, tokens, speed_rows, results_md = _results(cfg, paths, rows, groups, logs, warm_log, seed, csv=True)
    bins = acceptance_by_entropy(tokens, n_bins=cfg.n_bins, min_count=cfg.min_bin_count)
    write_text(bins.to_csv(index=False), paths.entropy_bins)
    figure_bins = bins if cfg.seeds is None else bins_over_seeds(bins, groups)
    write_text(results_md, paths.results)
    paths.interim.unlink(missing_ok=True)  # results.md over every draft replaces it
    figs = figure_paths(cfg, run_dir)
    figs["entropy"].parent.mkdir(parents=True, exist_ok=True)
    band = "the lowest to the highest seed" if cfg.seeds is not None else "Wilson 95% CI"
    figures = {
        "entropy": plot_acceptance_vs_entropy(
            figure_bins, f"{cfg.task}: acceptance vs teacher entropy (bins with >= {cfg.min_bin_count} tokens"
                         f"{' per seed' if cfg.seeds is not None else ''}; band: {band})", path=figs["entropy"]),
        "training": plot_training_curves(
            logs, f"{cfg.task}: distilling the draft (lmbda={cfg.lmbda}: share of steps on its own samples)",
            path=figs["training"], groups={g: r for g, r in groups.items() if g != BASELINE}),
    }
    if warm_log is not None:
        figures["warm"] = plot_warm_curve(warm_log, f"{cfg.task}: warm start of the baseline draft (gamma={cfg.gamma}, "
                                                    f"T={cfg.temperature})", path=figs["warm"])
    for fig in figures.values():
        plt.close(fig)  # shown where the caller displays it (notebook 04), not again by the inline backend
    return Analysis(table, results_md, bins, tokens, figures, speed_rows)
