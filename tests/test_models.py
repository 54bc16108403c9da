import pytest
import torch

from distillspec import DistillSpecError
from distillspec.models import (
    check_compatible,
    choose_layers,
    count_parameters,
    draft_from_teacher,
    load_model,
    load_tokenizer,
)
from distillspec.data import load_prompts, render_prompts
from distillspec.tiny import SMOLLM2_VOCAB, tiny_model


def test_alias_teacher_answers_a_gsm8k_question(teacher, shared_data):
    model, tok = teacher
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    prompt = render_prompts(tok, load_prompts("gsm8k", "test", 1, source=shared_data))[0]
    out = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, len(prompt):], skip_special_tokens=True)
    assert len(text.strip()) > 0


def test_draft_from_teacher_saves_and_reloads(teacher, tmp_path):
    model, tok = teacher
    draft = draft_from_teacher(model, 6)
    assert draft.config.num_hidden_layers == 6
    per_layer = count_parameters(model.model.layers[0])
    assert count_parameters(draft) == count_parameters(model) - 24 * per_layer
    # kept layers are copies of the teacher's first six, with their own cache indices 0..5
    assert torch.equal(draft.model.layers[5].mlp.up_proj.weight, model.model.layers[5].mlp.up_proj.weight)
    assert [layer.self_attn.layer_idx for layer in draft.model.layers] == list(range(6))
    ids = torch.tensor([tok("Hello there, how are")["input_ids"]])
    before = draft(ids).logits
    draft.save_pretrained(tmp_path / "draft")
    tok.save_pretrained(tmp_path / "draft")
    reloaded, reloaded_tok = load_model(tmp_path / "draft")
    assert reloaded.config.num_hidden_layers == 6
    assert reloaded.config.distillspec_kept_layers == list(range(6))
    torch.testing.assert_close(reloaded(ids).logits, before)
    assert check_compatible(tok, reloaded_tok, model, reloaded) == SMOLLM2_VOCAB
    out = reloaded.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 5)


def test_even_layer_choice_and_explicit_lists():
    assert choose_layers(30, 4, "even") == [0, 10, 19, 29]
    assert choose_layers(30, 3, "first") == [0, 1, 2]
    assert choose_layers(30, [0, 7, 29]) == [0, 7, 29]
    with pytest.raises(DistillSpecError, match="between 1 and the teacher's 30 layers"):
        choose_layers(30, 31)
    with pytest.raises(DistillSpecError, match="strictly increasing"):
        choose_layers(30, [3, 1])
    with pytest.raises(DistillSpecError, match="outside 0..29"):
        choose_layers(30, [0, 30])
    with pytest.raises(DistillSpecError, match="Unknown layer strategy 'middle'"):
        choose_layers(30, 2, "middle")


def test_draft_keeps_weights_of_chosen_layers():
    target = tiny_model("qwen3", num_layers=4, seed=5)
    draft = draft_from_teacher(target, [1, 3])
    assert draft.config.num_hidden_layers == 2
    assert torch.equal(draft.model.layers[1].self_attn.q_proj.weight, target.model.layers[3].self_attn.q_proj.weight)
    assert torch.equal(draft.model.embed_tokens.weight, target.model.embed_tokens.weight)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_tiny_models_are_tiny_and_use_the_real_vocabulary(kind, tokenizer):
    model = tiny_model(kind)
    assert 100_000 < count_parameters(model) < 1_000_000
    assert model.config.vocab_size == len(tokenizer)
    ids = torch.tensor([tokenizer("a tiny test")["input_ids"]])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def _word_tokenizer(words):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=words[0], eos_token=words[1])


def test_check_compatible_rejects_different_vocabularies(tokenizer):
    other = _word_tokenizer(["<unk>", "<eos>", "hello", "world"])
    with pytest.raises(DistillSpecError, match="Incompatible tokenizers: teacher has 49152 tokens, draft has 4"):
        check_compatible(tokenizer, other)


def test_check_compatible_allows_padding_rows_only(tokenizer):
    narrow = tiny_model("llama")
    padded = tiny_model("llama", vocab_size=SMOLLM2_VOCAB + 64)
    assert check_compatible(tokenizer, tokenizer, padded, narrow) == SMOLLM2_VOCAB
    too_small = tiny_model("llama", vocab_size=1000)
    with pytest.raises(DistillSpecError, match="output layer has 1000 rows but the tokenizer has 49152 tokens"):
        check_compatible(tokenizer, tokenizer, narrow, too_small)


def test_unknown_model_offline_names_the_fix():
    with pytest.raises(DistillSpecError, match="not a local directory, a .gguf file or a known alias"):
        load_tokenizer("no-such-org/no-such-model")


def test_missing_gguf_file():
    with pytest.raises(DistillSpecError, match="GGUF file not found"):
        load_model("/nonexistent/model.gguf")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_8bit_without_cuda_is_a_clear_error():
    with pytest.raises(DistillSpecError, match="teacher_8bit: true needs a CUDA GPU"):
        load_model("smollm2-135m-instruct", load_in_8bit=True)
