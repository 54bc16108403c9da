"""The study's four stages, one module each, named here for the notebooks and the command line: prepare.py (the
prompt sets), train.py (one draft), evaluation.py (SD of every draft, timed), analysis.py (tables, figures,
results.md). Where each writes: rundir.RunPaths; what the analysis says in words: results.py."""

from .analysis import Analysis, analyze, interim_results, load_records
from .evaluation import (cut_vocab, decoding_draft, decoding_speed, drafts_here, evaluate_drafts, load_timing,
                         read_speed_rows, retime_drafts, speed_table)
from .prepare import prepare_data
from .train import forget_draft, run_settings, train_draft, warm_start
from .vocabulary import draft_vocab

__all__ = ["Analysis", "analyze", "cut_vocab", "decoding_draft", "decoding_speed", "draft_vocab", "drafts_here",
           "evaluate_drafts", "forget_draft", "interim_results", "load_records", "load_timing", "prepare_data",
           "read_speed_rows", "retime_drafts", "run_settings", "speed_table", "train_draft", "warm_start"]
