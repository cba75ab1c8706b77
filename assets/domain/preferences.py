"""Preference pairs (a prompt, a chosen and a rejected reply) as the training and evaluation stages
read them.

Shared, not an asset: SFT trains on the chosen replies when the data holds nothing else, DPO trains
on the pairs, and evaluation scores held-out pairs; all three must see a pair the same way. A reply
is scored as TRL's DPOTrainer trains it: the tokens the chat template adds after the prompt's
generation prompt, when the reply is the assistant's turn (its text and end-of-turn token).
"""

import pandas as pd

from assets.domain.tool_calls import chat_inputs, render_text


def assistant(reply: str) -> dict:
    return {"role": "assistant", "content": reply}


def chosen_conversations(pairs: pd.DataFrame) -> pd.DataFrame:
    """Preference pairs as SFT examples: each prompt followed by its chosen reply. What SFT trains on
    when the train split holds only preference pairs."""
    examples = pairs.copy()
    examples["messages"] = [[*m, assistant(c)] for m, c in zip(pairs["messages"], pairs["chosen"])]
    examples["kind"] = "sft"
    return examples


def dpo_rows(pairs: pd.DataFrame, tokenizer) -> list[dict]:
    """Pairs in TRL's conversational preference shape: `prompt` (the turns before the reply, as every
    stage gives them to this tokenizer's template: `chat_inputs`), `chosen` and `rejected` (each one
    assistant turn). TRL renders them with the chat template."""
    return [
        {"prompt": chat_inputs(tokenizer, list(m))[0], "chosen": [assistant(c)], "rejected": [assistant(r)]}
        for m, c, r in zip(pairs["messages"], pairs["chosen"], pairs["rejected"])
    ]


def reply_tokens(tokenizer, prompt: list[dict], reply: str) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) of one reply to `prompt`: the prompt rendered with the generation
    prompt, and what the rendered conversation adds after it, as DPOTrainer splits them."""
    prompt_ids = tokenizer(render_text(tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)
    full_ids = tokenizer(render_text(tokenizer, [*prompt, assistant(reply)]), add_special_tokens=False)
    prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
    shared = 0
    while shared < min(len(prompt_ids), len(full_ids)) and prompt_ids[shared] == full_ids[shared]:
        shared += 1
    return full_ids[:shared], full_ids[shared:]


def margin_summary(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """From each pair's summed log-probability of its chosen and its rejected reply: the share of
    pairs where the chosen one is likelier (`preference_accuracy`) and the mean difference
    (`preference_margin`, in nats)."""
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {
        "preference_accuracy": sum(m > 0 for m in margins) / len(margins),
        "preference_margin": sum(margins) / len(margins),
    }
