"""The study's evaluation stage: batched SD of every draft against the target on the held-out prompts (per-token
and per-step records, a speed row per draft), each timed against the target alone where the preset has `speed`;
and reading those outputs back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..atomic import read_parquet, write_json, write_parquet
from ..data import render_prompts
from ..drafts import kind_named, kind_of, saved_draft
from ..errors import require
from ..evaluate import expected_acceptance
from ..drafts import load_draft
from ..pair import load_target
from ..runtime import machine
from ..specdec import speculative_generate
from ..speed import (BlockAcceptance, SourceAcceptance, best_transformers_lookup, busy_note, decoding_shape,
                     measure_step_costs, never_slower_gamma, pilot_acceptance, target_tokens_per_s, text_logits,
                     time_decoding)
from .manifest import intact, run_damage, seal
from .preset import StudyConfig
from .tables import speed_summary
from .rundir import (BASELINE, REFERENCE, RunPaths, draft_names, fingerprint, finished_drafts, known_drafts,
                     load_prompt_file)
from .vocabulary import draft_vocab


def _evaluated(paths: RunPaths, name: str, student: Path | None) -> bool:
    """This draft's records are complete, intact (its manifest) and newer than its student (a retrained draft is
    evaluated again). A damaged draft is named, and evaluated again when its model is here."""
    if not paths.manifest(name).is_file():
        return False
    damaged = run_damage(paths, name)
    if damaged:
        print(f"draft '{name}': its records are damaged ({'; '.join(damaged)}); evaluating it again")
        require(student is None or saved_draft(student) is not None,
                f"Draft '{name}' has damaged records ({'; '.join(damaged)}) and no trained student in {paths.root} "
                "to evaluate again: import it again (--results-from its published records) or train it here.")
        return False
    saved = None if student is None else saved_draft(student)
    if saved is None:  # baseline, or results imported (handoff)
        return True
    if name == BASELINE and paths.warm_retrain.is_dir():  # imported records; the warm draft trained again for them
        return True
    return paths.manifest(name).stat().st_mtime >= saved.stat().st_mtime


def evaluate_drafts(cfg: StudyConfig, run_dir: str | Path, names: list[str] | None = None) -> pd.DataFrame:
    """Evaluation stage: batched SD of each draft (default: the undistilled baseline and every distilled draft) against
    the target on the held-out prompts; writes per-token/per-step records and a speed row per draft, then speed.parquet
    with one row per finished draft. A finished draft is not evaluated again, so an interrupted evaluation resumes at
    the next draft."""
    paths = RunPaths(Path(run_dir))
    names = draft_names(cfg) if names is None else known_drafts(cfg, names)
    drafts = {n: _draft_source(cfg, paths, n) for n in names}
    todo = [n for n, path in drafts.items() if not _evaluated(paths, n, path)]
    reference = cfg.reference_lookup and not intact(paths, REFERENCE)  # transformers' prompt lookup, to time
    for name in todo:
        path = drafts[name]
        require(path is None or path.is_dir(),
                f"Draft '{name}' has no trained student at {path}: train it first (`python -m distillspec train`).")
    if cfg.speed and todo:
        _check_pilot_size(cfg, paths, todo)
    decoding = cfg.for_decoding()  # eval_precision, e.g. bf16 on a CPU with bf16 instructions
    if not todo and not reference:
        return _write_speed_table(cfg, paths)
    target, tok = load_target(decoding)
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))
    vocab = draft_vocab(cfg, run_dir, target, tok) if todo else None
    target_tps = _target_speed(cfg, paths, target, tok, prompts) if todo else None
    for name in tqdm(todo, desc="drafts"):
        started = time.perf_counter()
        draft = load_draft(_run_config(decoding, name), target, tok, drafts[name])  # None: baseline or lookup
        # on the draft's own samples (transformers generate), with the head it was trained with; a feature head
        # cannot write alone (it needs the target's hidden states), so it has no own samples
        own = None if not kind_of(draft).standalone else expected_acceptance(
            target, draft, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.eval_batch_size, progress=False)
        # as trained (a cut head adds untied rows, it does not make a new draft); prompt lookup has none
        params = kind_of(draft).parameters(draft)
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
        row["eval_s"] = time.perf_counter() - started  # this draft's evaluation on this machine (wall seconds)
        row["machine"] = machine()
        row["fingerprint"] = fingerprint(cfg, run_dir, name)  # its settings + prompt sets: checked on import
        write_json(row, paths.speed_row(name))
        seal(paths, name)  # the manifest, written last: marks this draft as done
        paths.results.unlink(missing_ok=True)  # the analysis ran without this draft's new records
    if reference:
        _time_reference(cfg, paths, target, tok, prompts)
    return _write_speed_table(cfg, paths)


def _check_pilot_size(cfg: StudyConfig, paths: RunPaths, names: list[str]) -> None:
    """Refuse, before any decoding, speed pilots larger than the run's training prompts (a slice would quietly read
    fewer prompts than the preset says)."""
    n_train = len(load_prompt_file(paths.train_prompts))
    for name in names:
        n_pilot = cfg.pilot_prompts(kind_named(_run_config(cfg, name).draft_kind).copies_context)
        require(n_train >= n_pilot, f"The speed pilot of draft '{name}' reads {n_pilot} training prompts but the run "
                                    f"has {n_train}: lower speed_pilot_prompts / speed_copy_pilot_prompts, or prepare "
                                    "more training prompts (n_train).")


def _write_speed_table(cfg: StudyConfig, paths: RunPaths) -> pd.DataFrame:
    speed = speed_table(cfg, paths.root)
    write_parquet(speed, paths.speed_table)
    return speed


def _time_reference(cfg: StudyConfig, paths: RunPaths, target, tok, prompts) -> None:
    """The timing table's reference row: transformers' own prompt lookup (assisted generation, batch 1 only) at each
    batch-1 `speed` setting, timed against the target alone on the drafts' timed prompts, its settings the fastest
    of speed.LOOKUP_GRID on the speed_pilot_prompts training prompts (never the evaluation's)."""
    started = time.perf_counter()
    pilot = render_prompts(tok, load_prompt_file(paths.train_prompts))[: cfg.speed_pilot_prompts]
    frames, timed = [], []
    for setting, sampling in zip(cfg.speed, cfg.speed_settings()):
        if setting.get("batch_size", 1) != 1:
            continue  # n/a: transformers' assisted generation decodes one prompt at a time
        label = _setting_label(sampling, 1)
        (k, n), grid = best_transformers_lookup(target, tok, pilot, sampling=sampling,
                                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        frame = time_decoding(target, None, tok, prompts[: cfg.speed_prompts], gamma=k, sampling=sampling,
                              batch_size=1, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                              progress=f"timing {REFERENCE}, {label}",
                              generate_kwargs={"prompt_lookup_num_tokens": k, "max_matching_ngram_size": n})
        frames.append(_labelled(frame, REFERENCE, label))
        timed.append({"setting": label, "gamma": k, "prompt_lookup_num_tokens": k, "max_matching_ngram_size": n,
                      "pilot_tokens_per_s": grid})
    write_parquet(pd.concat(frames, ignore_index=True), paths.timing(REFERENCE))
    write_json({"draft": REFERENCE, "timed": timed, "eval_s": time.perf_counter() - started, "machine": machine(),
                "fingerprint": fingerprint(cfg, paths.root, REFERENCE)}, paths.speed_row(REFERENCE))
    seal(paths, REFERENCE)
    paths.results.unlink(missing_ok=True)


def retime_drafts(cfg: StudyConfig, run_dir: str | Path, names: list[str]) -> pd.DataFrame:
    """The evaluation's timing again, on this machine, for drafts already evaluated (their acceptance records stay): the
    step costs, the chosen gamma, and SD against the target alone. For records timed elsewhere or by an older rule; it
    needs the trained students in the run directory. The analysis table is removed, so the next `run` rebuilds it."""
    require(cfg.speed, f"The preset '{cfg.name}' has no `speed` settings: there is nothing to time.")
    paths = RunPaths(Path(run_dir))
    names = known_drafts(cfg, names)
    require(names, "No drafts named to time again.")
    pending = [n for n in names if not paths.manifest(n).is_file() or run_damage(paths, n)]
    require(not pending, f"Drafts {pending} are not evaluated yet in {paths.root}: evaluate them first "
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
    paths.results.unlink(missing_ok=True)  # the analysis ran on the old timings
    return decoding_speed(cfg, run_dir, names)


def _target_speed(cfg: StudyConfig, paths: RunPaths, target, tok, prompts) -> float:
    """Target-only tokens/s on the held-out prompts, measured once per machine and reused by the run's later drafts;
    measured again when the run directory has moved to another machine."""
    here = machine()
    if paths.target_speed.is_file():
        saved = json.loads(paths.target_speed.read_text())
        if saved["machine"] == here:
            return saved["tokens_per_s"]
        print(f"target-only speed in {paths.target_speed} was measured on {saved['machine']}; measuring it again "
              f"here ({here})")
    tps = target_tokens_per_s(target, tok, prompts, batch_size=cfg.eval_batch_size,
                              max_new_tokens=cfg.max_new_tokens, sampling=cfg.sampling(), seed=cfg.seed)
    write_json({"tokens_per_s": tps, "n_prompts": len(prompts), "batch_size": cfg.eval_batch_size, "machine": here},
               paths.target_speed)
    return tps


def _draft_source(cfg: StudyConfig, paths: RunPaths, name: str) -> Path | None:
    """Where draft `name` is loaded from: its trained student, or None for the baseline (`student`, or derived)
    unless the study warm-starts it, and for a draft of a kind that saves nothing (made from its settings); a hybrid
    loads the trained student of the run it falls back on."""
    if name == BASELINE:
        return None if cfg.warm_start is None else paths.student(name)
    fallback = cfg.fallback_run(name)  # a hybrid: the trained draft of the run it names
    if fallback is not None:
        return paths.student(fallback)
    return paths.student(name) if cfg.trains(name) else None


def _run_config(cfg: StudyConfig, name: str):
    """The Config draft `name` is loaded with (its run's kind and keys; the base recipe for the baseline)."""
    return cfg.run_config(None if name == BASELINE else name)


def drafts_here(cfg: StudyConfig, run_dir: str | Path, names: list[str]) -> list[str]:
    """The named drafts whose model this run holds, in the order given: a draft imported from another machine
    (--results-from) has its records only."""
    paths = RunPaths(Path(run_dir))
    return [n for n in names if (source := _draft_source(cfg, paths, n)) is None or saved_draft(source) is not None]


def decoding_draft(cfg: StudyConfig, run_dir: str | Path, target, tok, name: str, *, full_head: bool = False):
    """Draft `name` of the run as the evaluation decodes with it (target from load_target(cfg.for_decoding())): its head
    cut to the run's draft vocabulary when the config sets one, unless full_head. For benchmarks on a finished run."""
    draft = load_draft(_run_config(cfg.for_decoding(), name), target, tok, _draft_source(cfg, RunPaths(Path(run_dir)),
                                                                                         name))
    vocab = None if full_head else draft_vocab(cfg, run_dir, target, tok)
    return draft if vocab is None else cut_vocab(draft, vocab["ids"], tok.eos_token_id)


def cut_vocab(draft, ids: list[int], eos_token_id):
    """The draft scoring only these token ids (its kind's cut: a standalone draft's LM head cut, a feature head
    reading only these rows of the target's LM head)."""
    return kind_of(draft).cut_vocab(draft, ids, eos_token_id)


def _time_against_target(cfg: StudyConfig, paths: RunPaths, target, draft, tok, prompts, name: str
                         ) -> tuple[pd.DataFrame, list[dict]]:
    """Each `speed` setting: the step costs on this machine, the draft length (fixed, or 'auto': the cost model's
    best for the acceptance of a short pilot on training prompts, then the never-slower check: SD with that gamma
    timed against the target on max(batch, pilot) training prompts, gamma 0 (the target alone) unless it was faster;
    the pilot is speed_pilot_prompts prompts, a copy draft's speed_copy_pilot_prompts), then SD and target-only timed
    on the first `speed_prompts` held-out prompts. Returns the timing rows and, per setting, how its gamma was
    chosen."""
    timed = prompts[: cfg.speed_prompts]
    train = render_prompts(tok, load_prompt_file(paths.train_prompts))
    n_pilot = cfg.pilot_prompts(kind_of(draft).copies_context)  # evaluate_drafts checked the run has as many
    pilot = train[:n_pilot]
    logits = text_logits(target, train[:4])  # [N, V] what sampling costs depends on the distributions' shapes
    frames, chosen, pilot_alphas = [], [], {}
    for setting, sampling in zip(cfg.speed, cfg.speed_settings()):
        batch = setting.get("batch_size", 1)
        label = _setting_label(sampling, batch)
        context, left_pad = decoding_shape(timed, batch, cfg.max_new_tokens)
        costs = measure_step_costs(target, draft, batch_size=batch, context=context, max_gamma=cfg.speed_max_gamma,
                                   left_pad=left_pad, sampling=sampling, logits=logits)
        pilot_alpha = pilot_speedup = blocks = sources = None
        gamma, decoded = cfg.speed_gamma, draft
        if gamma == "auto":  # the pilot's acceptance depends on the sampling, not the batch size: run it once
            if sampling not in pilot_alphas:
                res = speculative_generate(target, draft, pilot, gamma=cfg.speed_max_gamma, sampling=sampling,
                                           max_new_tokens=cfg.max_new_tokens, eos_token_id=tok.eos_token_id,
                                           record=False, seed=cfg.seed)
                pilot_alphas[sampling] = res.metrics.alpha_pos, pilot_acceptance(res)
            pilot_alpha, acceptance = pilot_alphas[sampling]  # acceptance: alpha, or per depth for cut blocks
            blocks = acceptance if isinstance(acceptance, BlockAcceptance) else None
            chosen_gamma = None
            if isinstance(acceptance, SourceAcceptance):  # sources mixed per row and step: a block for each
                sources = acceptance
                side_blocks = costs.best_hybrid_blocks(sources.lookup, sources.draft, sources.lookup_share)
                decoded, chosen_gamma = draft.with_blocks(*side_blocks), max(side_blocks)
            gamma, pilot_speedup = never_slower_gamma(target, decoded, tok, costs, acceptance,
                                                      train[: max(batch, n_pilot)], sampling=sampling,
                                                      batch_size=batch, max_new_tokens=cfg.max_new_tokens,
                                                      seed=cfg.seed, gamma=chosen_gamma)
        frame = time_decoding(target, decoded, tok, timed, gamma=gamma, sampling=sampling, batch_size=batch,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, progress=f"timing {name}, {label}")
        frames.append(_labelled(frame, name, label))
        chosen.append({"setting": label, "gamma": gamma, "pilot_alpha": pilot_alpha, "pilot_speedup": pilot_speedup,
                       **({} if blocks is None else {"pilot_blocks": blocks.as_dict()}),
                       **({} if sources is None else {"pilot_sources": sources.as_dict(),
                                                      "blocks": [decoded.lookup_block, decoded.draft_block]}),
                       "costs": costs.as_dict()})
    return pd.concat(frames, ignore_index=True), chosen


def _setting_label(sampling, batch: int) -> str:
    """How a timing row names its `speed` setting (the timing table's `setting`)."""
    return f"{'greedy' if sampling.greedy else f'T={sampling.temperature}'}, batch {batch}"


def _labelled(frame: pd.DataFrame, name: str, label: str) -> pd.DataFrame:
    """A setting's timing rows under its label, with a line naming any timed on a busy machine."""
    frame.insert(0, "setting", label)
    note = busy_note(frame, f"{name}, {label}")
    if note:
        print(note)
    return frame


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


def load_timing(run_dir: str | Path, names: list[str]) -> dict[str, pd.DataFrame]:
    """The evaluation's timing rows (SD against the target alone) of those of these drafts that were timed."""
    paths = RunPaths(Path(run_dir))
    return {n: read_parquet(paths.timing(n)) for n in names if paths.timing(n).is_file()}


def decoding_speed(cfg: StudyConfig, run_dir: str | Path, names: list[str], timing: dict[str, pd.DataFrame] | None = None,
                   rows: dict[str, dict] | None = None) -> pd.DataFrame:
    """The evaluation's timed runs of these drafts against the target alone, summarised (tables.speed_summary); timing,
    rows: the drafts' timing rows and speed rows when already read (load_timing, read_speed_rows)."""
    paths = RunPaths(Path(run_dir))
    timing = load_timing(run_dir, names) if timing is None else timing
    rows = rows or {n: json.loads(paths.speed_row(n).read_text()) for n in timing}
    timed = {n: rows[n].get("timed", []) for n in timing}
    return speed_summary(timing, timed, reference=REFERENCE) if timing else pd.DataFrame()


__all__ = ["cut_vocab", "decoding_draft", "decoding_speed", "drafts_here", "evaluate_drafts", "load_timing",
           "read_speed_rows", "retime_drafts", "speed_table"]
