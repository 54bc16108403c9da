"""Which token ids a reduced-vocabulary draft keeps: the ones the teacher actually writes for the task.

The draft's head then scores only those ids (models.reduce_draft_vocab). Ids are counted in the teacher's own
samples on the training prompts (the text SD will have to propose), the most frequent first; EOS and every special
token of the tokenizer (the chat template's markers) are always kept, so the draft can end an answer and a chat turn.
"""

from __future__ import annotations

from collections import Counter

from .errors import DistillSpecError, require
from .evaluate import sample_completions
from .sampling import SamplingConfig


def teacher_token_counts(teacher, tokenizer, prompts: list[list[int]], *, sampling: SamplingConfig,
                         max_new_tokens: int, batch_size: int = 16, seed: int = 0) -> Counter:
    """How often each token id appears in the teacher's completions of these prompts (up to and with EOS)."""
    require(len(prompts) > 0, "No prompts to sample the teacher's text from.")
    counts: Counter = Counter()
    for enc, out, new in sample_completions(teacher, tokenizer, prompts, sampling=sampling,
                                            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                            desc="teacher text for the draft vocabulary"):
        counts.update(out[:, enc["input_ids"].shape[1]:][new.bool()].tolist())
    return counts


def choose_draft_vocab(counts: Counter, tokenizer, size: int) -> list[int]:
    """The `size` most frequent ids of the teacher's text, plus EOS and the tokenizer's special tokens; sorted."""
    always = {int(i) for i in tokenizer.all_special_ids} | {int(tokenizer.eos_token_id)}
    require(size >= len(always), f"A draft vocabulary of {size} ids cannot hold the {len(always)} special tokens "
                                 f"(EOS and the chat template's markers); choose at least {len(always)}.")
    require(size <= len(tokenizer), f"draft vocabulary size {size} is larger than the tokenizer ({len(tokenizer)}).")
    frequent = [i for i, _ in counts.most_common() if i not in always][: size - len(always)]
    return sorted(always | set(frequent))


def check_draft_vocab(ids: list[int], tokenizer, prompts: list[list[int]]) -> None:
    """Refuse kept ids that the draft cannot work with: ids outside the tokenizer, or a vocabulary without EOS or
    without a special token the prompts' chat template uses (the draft must be able to close the turn)."""
    require(len(ids) > 0, "The reduced draft vocabulary is empty: run the prepare stage (01_data) again to choose "
                           "its ids.")
    outside = [i for i in ids if not 0 <= int(i) < len(tokenizer)]
    if outside:
        raise DistillSpecError(f"The reduced draft vocabulary has ids outside the tokenizer's {len(tokenizer)} tokens "
                               f"(e.g. {outside[0]}): it was chosen for another tokenizer; run the prepare stage "
                               "(01_data) again.")
    kept, special = set(ids), set(tokenizer.all_special_ids)
    used = {i for prompt in prompts for i in prompt if i in special}
    missing = sorted(({int(tokenizer.eos_token_id)} | used) - kept)
    require(not missing, f"The reduced draft vocabulary leaves out {tokenizer.convert_ids_to_tokens(missing)} (EOS or "
                         "the chat template's markers, which the prompts use): the draft could never end an answer "
                         "or a turn. Add those ids (choose_draft_vocab keeps every special token).")
