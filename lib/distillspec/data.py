"""Task prompts (GSM8K, CNN/DailyMail) as chat messages, from the hub or a local directory of jsonl files.

Prompts never contain the gold answer or highlights: training is label-free, and references are only kept
(column `reference`) when explicitly asked for, for optional quality checks.
"""

from __future__ import annotations

import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import datasets

from .errors import DistillSpecError, require


@dataclass(frozen=True)
class TaskSpec:
    hub_id: str
    hub_config: str
    text_field: str
    reference_field: str
    system_prompt: str
    user_template: str
    max_new_tokens: int
    temperature: float


TASKS = {
    "gsm8k": TaskSpec(
        hub_id="openai/gsm8k",
        hub_config="main",
        text_field="question",
        reference_field="answer",
        system_prompt=(
            "You are a careful math tutor. Solve the problem step by step, explaining each calculation, "
            "and finish with the final numeric answer on its own line as '#### <answer>'."
        ),
        user_template="{text}",
        max_new_tokens=312,
        temperature=0.6,
    ),
    "cnndm": TaskSpec(
        hub_id="abisee/cnn_dailymail",
        hub_config="3.0.0",
        text_field="article",
        reference_field="highlights",
        system_prompt="You are a helpful assistant that writes short, faithful summaries of news articles.",
        user_template="Summarize the following news article in two or three sentences.\n\n{text}",
        max_new_tokens=128,
        temperature=0.7,
    ),
}

DATA_DIR_ENV = "DISTILLSPEC_DATA_DIR"


@contextmanager
def data_dir_env_resolved():
    """$DISTILLSPEC_DATA_DIR made absolute (against the current directory) while the block runs, so processes
    started elsewhere (papermill's kernels run in notebooks/) read the folder the user named where they typed it."""
    value = os.environ.get(DATA_DIR_ENV)
    if value in (None, "", "hub") or Path(value).is_absolute():
        yield
        return
    os.environ[DATA_DIR_ENV] = str(Path(value).resolve())
    try:
        yield
    finally:
        os.environ[DATA_DIR_ENV] = value


def task_spec(task: str) -> TaskSpec:
    require(task in TASKS, f"Unknown task '{task}'; choose one of: {', '.join(TASKS)}.")
    return TASKS[task]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP check of the Hugging Face endpoint (honours HF_ENDPOINT and the *_OFFLINE switches)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_local(task: str, split: str, root: Path) -> datasets.Dataset:
    task_dir = root / task
    require(
        task_dir.is_dir(),
        f"Local data source {root} has no '{task}' folder; expected {task_dir}/<split>.jsonl "
        "(the layout of ../shared/data).",
    )
    path = task_dir / f"{split}.jsonl"
    if not path.is_file():
        available = sorted(p.stem for p in task_dir.glob("*.jsonl"))
        raise DistillSpecError(f"No split '{split}' for {task} in {task_dir}; available splits: {available}.")
    with open(path) as lines:
        require(any(line.strip() for line in lines), f"The {task} {split} file {path} is empty; nothing to load.")
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as err:  # datasets wraps a parse error deep in DatasetGenerationError: find the line ourselves
        raise DistillSpecError(f"{path}: {_first_bad_line(path) or err}. Restore the file (one JSON object per "
                               "line), e.g. from the data's source.") from err


def _first_bad_line(path: Path) -> str | None:
    """'line N is not a JSON object (...)' for the first line of a jsonl file that does not parse, or None."""
    import json

    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                if isinstance(json.loads(line), dict):
                    continue
                problem = "not a mapping"
            except json.JSONDecodeError as err:
                problem = err.msg
            return f"line {number} is not a JSON object ({problem}; a truncated or damaged file?)"
    return None


def _load_hub(task: str, split: str) -> datasets.Dataset:
    spec = task_spec(task)
    if not hub_reachable():
        raise DistillSpecError(
            f"The Hugging Face Hub is unreachable, so '{spec.hub_id}' cannot be loaded. Point at local jsonl "
            f"files instead: load_prompts(..., source='../shared/data') or set {DATA_DIR_ENV}=<dir> "
            f"(a directory holding {task}/{split}.jsonl)."
        )
    try:
        return datasets.load_dataset(spec.hub_id, spec.hub_config, split=split)
    except ValueError as err:  # unknown split
        raise DistillSpecError(f"Could not load split '{split}' of {spec.hub_id}: {err}") from err


def load_raw(task: str, split: str, source: str | os.PathLike | None = None) -> datasets.Dataset:
    """The raw split with a stable `row` index column. source: 'hub', a directory, or None ($DISTILLSPEC_DATA_DIR,
    else the hub)."""
    task_spec(task)
    source = source if source is not None else os.environ.get(DATA_DIR_ENV, "hub")
    if str(source) == "hub":
        ds = _load_hub(task, split)
    else:
        root = Path(source)
        require(root.is_dir(), f"Data directory not found: {root}. Pass source='hub' or a directory of jsonl files.")
        ds = _load_local(task, split, root)
    require(len(ds) > 0, f"The {task} {split} split at {source} is empty; nothing to load.")
    return ds.add_column("row", list(range(len(ds))))


def _messages(spec: TaskSpec, text: str) -> list[dict]:
    return [
        {"role": "system", "content": spec.system_prompt},
        {"role": "user", "content": spec.user_template.format(text=text)},
    ]


def token_lengths(tokenizer, texts) -> list[int]:
    """Token count of each text, no special tokens (the CNN/DM article-length filter's measure).
    Accepts any iterable of strings, e.g. a datasets Column, which the tokenizer itself rejects."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def load_prompts(
    task: str,
    split: str,
    n: int | None = None,
    *,
    source: str | os.PathLike | None = None,
    seed: int = 0,
    tokenizer=None,
    max_article_tokens: int | None = 512,
    keep_reference: bool = False,
) -> datasets.Dataset:
    """A seeded subset of task prompts as a Dataset with columns id, prompt (chat messages)[, reference].

    The subset is the first n rows of a seed-shuffled split, after the CNN/DM length filter (articles with more
    than max_article_tokens tokens are dropped, as in the reference study; needs `tokenizer`).
    """
    spec = task_spec(task)
    require(n is None or n >= 1, f"n={n}: ask for at least one prompt (or n=None for all).")
    length_filter = task == "cnndm" and max_article_tokens is not None
    require(
        not length_filter or tokenizer is not None,
        "The CNN/DM length filter needs a tokenizer: pass tokenizer=..., or max_article_tokens=None to keep all.",
    )
    raw = load_raw(task, split, source).shuffle(seed=seed)
    missing = {spec.text_field} - set(raw.column_names)
    require(not missing, f"The {task} data has no field {missing}; found {raw.column_names}.")
    keep: list[int] = []
    want = len(raw) if n is None else n
    chunk = 256
    for start in range(0, len(raw), chunk):
        texts = raw[start : start + chunk][spec.text_field]
        empty = [raw[start + i]["row"] for i, t in enumerate(texts) if not (t and t.strip())]
        require(not empty, f"{task} {split} rows {empty[:5]} have an empty '{spec.text_field}': no prompt to "
                "build. Remove those rows from the data.")
        ok = [True] * len(texts)
        if length_filter:
            lengths = token_lengths(tokenizer, texts)
            ok = [o and length <= max_article_tokens for o, length in zip(ok, lengths)]
        keep.extend(start + i for i, o in enumerate(ok) if o)
        if len(keep) >= want:
            break
    keep = keep[:want]
    require(
        len(keep) > 0,
        f"No {task} {split} prompts left after filtering (max_article_tokens={max_article_tokens}); "
        "raise the limit or check the data.",
    )
    if n is not None and len(keep) < n:
        warnings.warn(f"Asked for {n} {task} {split} prompts, only {len(keep)} are available after filtering.")
    subset = raw.select(keep)
    ids = subset["id"] if "id" in subset.column_names else [f"{task}-{split}-{r}" for r in subset["row"]]
    columns = {"id": [str(i) for i in ids], "prompt": [_messages(spec, t) for t in subset[spec.text_field]]}
    if keep_reference:
        columns["reference"] = subset[spec.reference_field]
    return datasets.Dataset.from_dict(columns)


def check_prompt_rows(ds) -> None:
    """Every row must carry a non-empty chat prompt (list of messages ending in user text)."""
    require(len(ds) > 0, "The prompt dataset is empty: nothing to train or evaluate on.")
    require("prompt" in ds.column_names, f"The dataset has no 'prompt' column; found {ds.column_names}.")
    bad = [i for i, m in enumerate(ds["prompt"]) if not m or not isinstance(m, list) or not m[-1].get("content")]
    require(not bad, f"Dataset rows {bad[:5]} have no prompt (empty messages or empty text); fix or drop them.")


def render_prompts(tokenizer, prompts) -> list[list[int]]:
    """Chat-template token ids (with the assistant generation prompt) for each prompt's messages."""
    rows = prompts["prompt"] if isinstance(prompts, datasets.Dataset) else prompts
    require(len(rows) > 0, "No prompts to render: the prompt list is empty.")
    out = []
    for i, messages in enumerate(rows):
        require(isinstance(messages, list) and len(messages) > 0, f"Prompt {i} has no messages.")
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        out.append(list(ids))
    return out
