"""Greedy answers to many prompts at once, as the evaluation generates them.

One left-padded `model.generate` call per batch wastes most of its work on real data (BENCHMARKS.md,
"Evaluation"): its prompts are padded to the longest one before the first token (a Dolly batch
with one 426-token context is three quarters padding), and every row runs until the longest answer
ends, while the model is done with most of them. `greedy_answers` keeps `generate` (and so the
model's generation config and its stopping rules) and removes both wastes:

- Prompts are batched by length, and each batch's prompts are read (prefilled) in groups of similar
  length; their key/value caches are then joined into one left-padded StaticCache
  (`prefilled_cache`), so that no layer runs on padding before decoding starts, and no decoding step
  copies the cache to grow it.
- `generate` runs `DECODE_SEGMENT` tokens at a time on that cache; between two segments the rows
  that have ended leave the batch, cache included (`keep_rows`).

The answers are those of one `generate` call per prompt (the benchmark checks them token for token);
only the work differs. A model whose cache is not made of plain growing layers (sliding windows,
state-space layers) is prefilled by `generate` itself, padding included.
"""

from collections.abc import Sequence
from dataclasses import dataclass

# New tokens generated between two looks at which rows have ended. A segment costs one `generate`
# call, which adds next to nothing to its decoding steps, so short segments only free rows sooner.
DECODE_SEGMENT = 8
# Prompts whose lengths are within this ratio are prefilled together (padded to the longest of them).
PREFILL_LENGTH_RATIO = 1.25


@dataclass(frozen=True)
class Answer:
    tokens: list[int]  # the new tokens, up to and including the end-of-turn token when there is one
    stopped: bool  # the model ended it before the budget ran out


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of `lengths` in batches of `batch_size`, each of similar lengths (sorted, then cut)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def similar_length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of `lengths` in groups whose longest is at most PREFILL_LENGTH_RATIO x their shortest."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and lengths[i] <= PREFILL_LENGTH_RATIO * max(lengths[groups[-1][0]], 1):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None):
    """Token ids and attention mask, each row padded on the left to `width` (default: the longest)."""
    import torch

    width = width or max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def plain_dynamic_cache(model) -> bool:
    """Whether the model's cache is made of plain growing layers, so that caches can be joined."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def read_rows(model, rows: Sequence[Sequence[int]], pad_id: int, width: int) -> list[tuple]:
    """Keys and values of every row, per layer, in the order of `rows`, left-padded to `width`: the
    rows are read in groups of similar length, so that padding costs next to nothing. Padded
    positions hold zeros (they are masked, but a NaN there would still spoil the weighted sum)."""
    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache

    read, parts = [], []
    for group in similar_length_groups([len(r) for r in rows]):
        ids, mask = left_padded([rows[i] for i in group], pad_id)
        cache = DynamicCache(config=model.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                position_ids=positions.to(model.device), past_key_values=cache, use_cache=True, logits_to_keep=1,
            )  # fmt: skip
        real = mask.bool().view(len(group), 1, -1, 1).to(model.device)
        shift = (0, 0, width - ids.shape[1], 0)  # more padding on the left of the sequence dimension
        parts.append([tuple(F.pad(torch.where(real, states, 0.0), shift) for states in (layer.keys, layer.values))
                      for layer in cache.layers])  # fmt: skip
        read += group
    back = torch.tensor(read).argsort().to(model.device)  # each row's place among the rows as read
    return [tuple(torch.cat([part[n][kv] for part in parts])[back] for kv in (0, 1)) for n in range(len(parts[0]))]


def prefilled_cache(model, rows: Sequence[Sequence[int]], pad_id: int, capacity: int):
    """A StaticCache of `capacity` positions holding `rows` (each row's tokens all read), left-padded
    to the longest row, the rows read without padding (`read_rows`). A static cache, written in
    place, spares each decoding step a copy of the whole cache (a DynamicCache grows by
    concatenation: a fifth of the decoding time on Dolly prompts, BENCHMARKS.md)."""
    from transformers import StaticCache

    joined = StaticCache(config=model.config, max_cache_len=capacity)
    for layer, (keys, values) in zip(joined.layers, read_rows(model, rows, pad_id, width=max(len(r) for r in rows))):
        layer.update(keys, values)
    return joined


def keep_rows(cache, rows) -> None:
    """Only keep `rows` (a tensor of batch indices) in `cache`, a DynamicCache or a StaticCache
    (whose layers transformers gives no such method: their tensors are indexed here)."""
    from transformers.cache_utils import StaticLayer

    if not all(isinstance(layer, StaticLayer) for layer in cache.layers):
        cache.batch_select_indices(rows)
        return
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]


def end_tokens(model, tokenizer) -> set[int]:
    """The token ids that end an answer: the generation config's end-of-sequence ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    return {t for t in (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id] if t is not None}


def decoded_in_segments(model, ids, mask, cache, budget: int, ends: set[int], pad_id: int) -> list[Answer]:
    """Greedy answers for left-padded `ids`, continuing `cache` (which holds all but the last token of
    each row), DECODE_SEGMENT new tokens per `generate` call; rows that have ended leave the batch."""
    import torch

    width, made = ids.shape[1], 0
    answers: list[Answer | None] = [None] * len(ids)
    active = list(range(len(ids)))
    while active:
        step = min(DECODE_SEGMENT, budget - made)
        with torch.no_grad():
            ids = model.generate(
                input_ids=ids, attention_mask=mask, past_key_values=cache, max_new_tokens=step, do_sample=False,
                pad_token_id=pad_id, disable_compile=True,  # the batch shrinks: a compiled step would recompile
            )  # fmt: skip
        made += step
        mask = torch.cat([mask, mask.new_ones(len(active), ids.shape[1] - mask.shape[1])], dim=1)
        keep = []
        for j, row in enumerate(ids[:, width:].tolist()):
            end = next((n for n, token in enumerate(row) if token in ends), None)
            if end is not None or made >= budget:
                answers[active[j]] = Answer(tokens=row if end is None else row[: end + 1], stopped=end is not None)
            else:
                keep.append(j)
        if keep and len(keep) < len(active):
            keep_rows(cache, torch.tensor(keep, device=ids.device))
        ids, mask, active = ids[keep], mask[keep], [active[j] for j in keep]
    return answers


def batch_answers(
    model, rows: list[list[int]], budget: int, ends: set[int], pad_id: int, joinable: bool
) -> list[Answer]:
    """Greedy answers to one batch of tokenized prompts: prefilled without padding where the model's
    cache can be joined (`joinable`), then decoded in segments."""
    from transformers import DynamicCache

    ids, mask = left_padded(rows, pad_id)
    if joinable and min(len(r) for r in rows) > 1:
        cache = prefilled_cache(model, [r[:-1] for r in rows], pad_id, capacity=ids.shape[1] + budget)
    else:
        cache = DynamicCache(config=model.config)  # generate prefills it, padding included
    return decoded_in_segments(model, ids.to(model.device), mask.to(model.device), cache, budget, ends, pad_id)


def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[Answer]:
    """Greedy answers to rendered prompts, at most `max_new_tokens` each, in batches of `batch_size`
    prompts of similar length; in the order of `prompts`."""
    rows = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    ends, pad_id, joinable = end_tokens(model, tokenizer), tokenizer.pad_token_id, plain_dynamic_cache(model)
    answers: list[Answer | None] = [None] * len(rows)
    for batch in length_batches([len(r) for r in rows], batch_size):
        batch_rows = [rows[i] for i in batch]
        for i, answer in zip(batch, batch_answers(model, batch_rows, max_new_tokens, ends, pad_id, joinable)):
            answers[i] = answer
    return answers
