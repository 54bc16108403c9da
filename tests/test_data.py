import json

import pytest

from distillspec import DistillSpecError
from distillspec.data import TASKS, load_prompts, render_prompts


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_gsm8k_counts_and_no_labels(shared_data, tokenizer):
    ds = load_prompts("gsm8k", "test", source=shared_data)
    raw = _jsonl(shared_data / "gsm8k" / "test.jsonl")
    assert len(ds) == len(raw) == 1319
    assert set(ds.column_names) == {"id", "prompt"}
    answers = {r["question"]: r["answer"] for r in raw}
    for row in ds.select(range(50)):
        system, user = row["prompt"]
        assert system["role"] == "system" and user["role"] == "user"
        assert user["content"] in answers
        answer = answers[user["content"]]
        final = answer.split("####")[-1].strip()
        text = system["content"] + user["content"]
        assert answer not in text and f"#### {final}" not in text
    ids = render_prompts(tokenizer, ds.select(range(3)))
    assert all(tokenizer.decode(i).rstrip().endswith("<|im_start|>assistant") for i in ids)


def test_gsm8k_train_split_and_references_on_request(shared_data):
    ds = load_prompts("gsm8k", "train", 5, source=shared_data, keep_reference=True)
    assert len(ds) == 5 and all("####" in r for r in ds["reference"])


def test_cnndm_length_filter(shared_data, tokenizer):
    raw = _jsonl(shared_data / "cnndm" / "test.jsonl")
    lengths = [len(tokenizer(r["article"], add_special_tokens=False)["input_ids"]) for r in raw]
    expected = sum(n <= 512 for n in lengths)
    assert 0 < expected < len(raw)
    ds = load_prompts("cnndm", "test", source=shared_data, tokenizer=tokenizer)
    assert len(ds) == expected
    unfiltered = load_prompts("cnndm", "test", source=shared_data, max_article_tokens=None)
    assert len(unfiltered) == len(raw)
    highlights = {r["id"]: r["highlights"] for r in raw}
    for row in ds.select(range(20)):
        assert highlights[row["id"]] not in row["prompt"][1]["content"]
    assert TASKS["cnndm"].max_new_tokens == 128 and TASKS["gsm8k"].max_new_tokens == 312


def test_subsets_are_deterministic_by_seed(shared_data):
    a = load_prompts("gsm8k", "test", 16, source=shared_data, seed=3)
    b = load_prompts("gsm8k", "test", 16, source=shared_data, seed=3)
    c = load_prompts("gsm8k", "test", 16, source=shared_data, seed=4)
    assert a["id"] == b["id"] and a["id"] != c["id"]
    assert len(set(a["id"])) == 16


def test_bad_inputs_name_the_fix(shared_data, tmp_path, monkeypatch):
    with pytest.raises(DistillSpecError, match="Unknown task 'mmlu'; choose one of: gsm8k, cnndm"):
        load_prompts("mmlu", "test", source=shared_data)
    with pytest.raises(DistillSpecError, match=r"No split 'dev' for gsm8k .* available splits: \['test', 'train'\]"):
        load_prompts("gsm8k", "dev", source=shared_data)
    with pytest.raises(DistillSpecError, match="ask for at least one prompt"):
        load_prompts("gsm8k", "test", 0, source=shared_data)
    with pytest.raises(DistillSpecError, match="Data directory not found"):
        load_prompts("gsm8k", "test", source=tmp_path / "missing")
    with pytest.raises(DistillSpecError, match="needs a tokenizer"):
        load_prompts("cnndm", "test", source=shared_data)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text("")
    with pytest.raises(DistillSpecError, match="empty"):
        load_prompts("gsm8k", "test", source=tmp_path)
    monkeypatch.delenv("DISTILLSPEC_DATA_DIR", raising=False)
    with pytest.raises(DistillSpecError, match="Hub is unreachable.*source='../shared/data'"):
        load_prompts("gsm8k", "test", 4)
    with pytest.raises(DistillSpecError, match="prompt list is empty"):
        render_prompts(None, [])


def test_data_dir_environment_variable(shared_data, monkeypatch):
    monkeypatch.setenv("DISTILLSPEC_DATA_DIR", str(shared_data))
    assert len(load_prompts("gsm8k", "test", 3)) == 3
