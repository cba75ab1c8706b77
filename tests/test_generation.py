"""Batched greedy answers (resources/generation.py) against one `generate` call per prompt, token for token."""

import pytest
import torch

from resources import generation
from resources.generation import greedy_answers, length_batches, similar_length_groups

# Prompts from 2 to about 140 tokens, so that batches, prefill groups and padding all differ.
PROMPTS = [
    "Hi",
    "Summarise the ticket: the printer on floor two jams on every duplex job since Monday.",
    "Which planet is largest?",
    " ".join(f"Line {i}: the customer reports that the invoice total does not match the order." for i in range(9)),
    "Translate to French: good morning, how are you today?",
    "List three primes.",
    " ".join(f"Step {i} of the procedure restarts the service and checks its log." for i in range(4)),
]
BUDGET = 21  # more than two decode segments, and not a multiple of one


def tiny_causal_lm(tokenizer, architecture: str):
    """A small random model with the bundled tokenizer: Llama, or Mistral with a sliding window (whose
    cache layers cannot be joined, so generation falls back to padded prefill)."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(1)
    if architecture == "mistral":
        return MistralForCausalLM(MistralConfig(**common, sliding_window=16)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def one_prompt_at_a_time(model, tokenizer, prompts, budget):
    """The reference: one greedy `generate` call per prompt; new tokens up to and including the first end token."""
    ends = generation.end_tokens(model, tokenizer)
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=budget, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        row = out[0, ids.shape[1] :].tolist()
        end = next((n for n, token in enumerate(row) if token in ends), None)
        answers.append((row if end is None else row[: end + 1], end is not None))
    return answers


def with_early_ends(model, tokenizer):
    """End tokens chosen from the model's own answers, so that some rows end after a few tokens, some
    in the second segment, and some run out of budget."""
    free = one_prompt_at_a_time(model, tokenizer, PROMPTS, BUDGET)
    ends = {free[1][0][3], free[4][0][12]}
    model.generation_config.eos_token_id = sorted(ends)
    return model


@pytest.mark.parametrize("architecture", ["llama", "mistral"])
def test_batched_answers_are_those_of_one_generate_per_prompt(bundled_tokenizer, architecture):
    model = with_early_ends(tiny_causal_lm(bundled_tokenizer, architecture), bundled_tokenizer)
    assert generation.plain_dynamic_cache(model) is (architecture == "llama")
    expected = one_prompt_at_a_time(model, bundled_tokenizer, PROMPTS, BUDGET)
    lengths = [len(tokens) for tokens, _ in expected]
    # The case worth testing: rows end in different segments, and some use the whole budget.
    assert min(lengths) <= generation.DECODE_SEGMENT < max(lengths) and max(lengths) == BUDGET
    assert any(stopped for _, stopped in expected) and not all(stopped for _, stopped in expected)

    # Two batches: the shortest four (one prompt of a single token: nothing to prefill, so generate reads
    # them padded), then the longest three (prefilled in groups and joined, for Llama).
    answers = greedy_answers(model, bundled_tokenizer, PROMPTS, BUDGET, batch_size=4)
    assert [(a.tokens, a.stopped) for a in answers] == expected


def test_joined_cache_reads_each_prompt_without_padding(bundled_tokenizer):
    """The joined, left-padded cache continues each row exactly as that row's own cache would."""
    model = tiny_causal_lm(bundled_tokenizer, "llama")
    rows = [bundled_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    rows = [r for r in rows if len(r) > 1]  # a one-token prompt leaves nothing to prefill (generate reads it)
    cache = generation.prefilled_cache(model, [r[:-1] for r in rows], bundled_tokenizer.pad_token_id, capacity=200)
    ids, mask = generation.left_padded(rows, bundled_tokenizer.pad_token_id)
    with torch.no_grad():
        last = model(input_ids=ids[:, -1:], attention_mask=mask, past_key_values=cache,
                     position_ids=mask.sum(-1, keepdim=True) - 1).logits[:, -1]  # fmt: skip
        alone = torch.stack([model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows])
    torch.testing.assert_close(last, alone, rtol=1e-4, atol=1e-4)


def test_batches_and_prefill_groups_follow_length():
    lengths = [40, 3, 300, 41, 5, 120, 39, 4]
    assert length_batches(lengths, 3) == [[1, 7, 4], [6, 0, 3], [5, 2]]
    groups = similar_length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        shortest, longest = min(lengths[i] for i in group), max(lengths[i] for i in group)
        assert longest <= generation.PREFILL_LENGTH_RATIO * shortest
    assert [0, 3, 6] in [sorted(g) for g in groups]  # 39, 40, 41 read together
