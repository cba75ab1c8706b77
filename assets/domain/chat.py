"""Rules about chat examples shared by the data, training and evaluation assets.

Shared, not an asset: how an example is normalized, keyed, split and
rendered for training must be identical wherever it is measured, trained on or scored.
"""

import hashlib
from dataclasses import dataclass

from assets.domain.token_lengths import SMOLLM2_CHAT_TEMPLATE
from assets.domain.tool_calls import chat_inputs, render_text

DEFAULT_SYSTEM_PROMPT = "You are a precise assistant. Follow the instruction exactly."

# One ChatML turn with the {% generation %} markers TRL needs to train on the assistant's tokens only
# (they render as nothing). The end-of-turn token sits inside the markers so the model learns to
# stop. An assistant turn with weight 0 is context: same text, no markers.
CHATML_TURN = (
    "{%- if message['role'] == 'assistant' and (message['weight'] is not defined or message['weight'] != 0) %}"
    "{{- '<|im_start|>assistant\\n' }}{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
)
CHATML_GENERATION_PROMPT = "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
# SmolLM2's ChatML template (`SMOLLM2_CHAT_TEMPLATE`) rendered exactly as it renders, with the markers.
CHATML_TRAINING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif %}" + CHATML_TURN + "{%- endfor %}" + CHATML_GENERATION_PROMPT
)
# The chat template a base model without one gets: the same ChatML, with no default system turn.
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
DEFAULT_CHAT_TEMPLATE = "{%- for message in messages %}" + CHATML_TURN + "{%- endfor %}" + CHATML_GENERATION_PROMPT


def normalize(value: str) -> str:
    """Case- and whitespace-insensitive form used to find duplicates and to split: whitespace runs
    as one space, none at the ends (`str.split` splits at the characters `\\s` matches, and is
    several times faster than `re.sub` on long texts), then casefolded."""
    return " ".join(value.split()).casefold()


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """`messages` with `system_prompt` in front unless they open with a system message already."""
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def prompt_turns(messages: list[dict]) -> list[dict]:
    """The turns a model is prompted with: all but a final assistant answer, system excluded."""
    turns = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return [m for m in turns if m["role"] != "system"]


def turn_text(message: dict) -> str:
    """One turn as the duplicate and split keys read it: role and content, then any tool calls."""
    calls = "".join(
        f" [call {c['function']['name']}({c['function']['arguments']})]" for c in message.get("tool_calls") or []
    )
    return f"{message['role']}: {message['content']}{calls}"


def conversation_text(messages: list[dict], *answers: str | None) -> str:
    parts = [turn_text(m) for m in messages if m["role"] != "system"]
    return "\x1f".join(parts + [a for a in answers if a is not None])


def prompt_hash(messages: list[dict]) -> str:
    """Content hash of the normalized prompt; the train/eval split is a pure function of it."""
    text = normalize(conversation_text(prompt_turns(messages)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def training_chat_template(tokenizer) -> str:
    """The template training renders with: the tokenizer's own when it has {% generation %} markers,
    TRL's patched version of it where TRL knows it, our ChatML equivalent for ChatML templates, and
    otherwise the tokenizer's own template unchanged, whose assistant spans `training_tokens` derives
    by rendering (`derived_assistant_mask`). Loss stays on the assistant's tokens either way."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template or ""
    if has_generation_markers(template):
        return template
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        return CHATML_TRAINING_TEMPLATE if template == SMOLLM2_CHAT_TEMPLATE else template


def prompt_text(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text a model is prompted with for an example: every turn but a final assistant answer
    (system included), rendered with `tools` as training renders it, ending with the generation
    prompt. Tokenize with `add_special_tokens=False` (the template wrote them). The expected reply is
    `tool_calls.reply_text(messages[-1])`; a generated one reads back with `tool_calls.parse_reply`."""
    turns = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return render_text(tokenizer, turns, tools, add_generation_prompt=True)


def training_tokens(tokenizer, messages: list[dict], tools: list[dict] | None, chat_template: str) -> dict:
    """One conversation as it is trained on: `input_ids` and `assistant_masks` (1 on the tokens that
    carry loss), rendered the way every stage renders it (`tool_calls.chat_inputs`: the template's own
    tool support, else the fallback; a system turn folded where the template has none). A template
    with {% generation %} markers marks the assistant's tokens itself; for any other the spans are
    derived (`derived_assistant_mask`)."""
    from trl.chat_template_utils import has_generation_markers

    if not has_generation_markers(chat_template):
        ids, mask = derived_assistant_mask(tokenizer, messages, tools, chat_template)
    else:
        rendered, native_tools = chat_inputs(tokenizer, messages, tools, chat_template)
        encoded = tokenizer.apply_chat_template(
            rendered,
            chat_template=chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            **({"tools": native_tools} if native_tools else {}),
        )
        ids, mask = list(encoded["input_ids"]), weighted_mask(list(encoded["assistant_masks"]), messages)
    if 1 not in mask:
        raise ValueError(
            "An example has no assistant tokens to train on: the training template marks none "
            "(no {% generation %} markers?) or every assistant turn has weight 0."
        )
    return {"input_ids": ids, "assistant_masks": mask}


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None, chat_template: str) -> tuple[str, list]:
    """The conversation's text as the template renders it, and the (start, end) character span of
    each trained assistant turn in it (weight 0 turns left out): what the template writes for the turn
    after the generation prompt, its end-of-turn token included, trailing whitespace not.

    Found by rendering: the turns before the answer with the generation prompt are where the answer
    starts, the turns up to and with the answer are where it ends. A template whose renderings are
    not prefixes of each other (one that rewrites earlier turns) is refused with that reason."""
    rendered, native_tools = chat_inputs(tokenizer, messages, tools, chat_template)
    extra = {"chat_template": chat_template, "tokenize": False, **({"tools": native_tools} if native_tools else {})}
    text = tokenizer.apply_chat_template(rendered, **extra)
    weights = iter(m.get("weight", 1) for m in messages if m["role"] == "assistant")
    spans = []
    for i, turn in enumerate(rendered):
        if turn["role"] != "assistant" or next(weights, 1) == 0:
            continue
        before = tokenizer.apply_chat_template(rendered[:i], add_generation_prompt=True, **extra)
        through = tokenizer.apply_chat_template(rendered[: i + 1], **extra).rstrip()
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise ValueError(
                f"The base model's chat template renders assistant turn {i + 1} differently alone than in the "
                "whole conversation, so the tokens of its answer cannot be told apart for the loss. Add "
                "{% generation %} markers around the assistant's reply in the template (tokenizer_config.json)."
            )
        spans.append((len(before), len(through)))
    return text, spans


def derived_assistant_mask(tokenizer, messages: list[dict], tools, chat_template: str) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation (as validation counts them: the text tokenized without
    added special tokens) and a mask with 1 on each token inside an assistant span (`assistant_spans`),
    for templates without {% generation %} markers."""
    text, spans = assistant_spans(tokenizer, messages, tools, chat_template)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a < end and b > start for start, end in spans)) for a, b in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), mask


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant's answer (`<|im_end|>`,
    `<|eot_id|>`, `<end_of_turn>`, `<|end|>`, `</s>`), or None when it writes none: the token a
    trained model emits to end its turn, so generation must stop on it."""
    probe = "END-PROBE-9b2e"
    text = render_text(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": probe}])
    tail = text[text.rindex(probe) + len(probe) :]
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return next((t for t in tokenizer.convert_ids_to_tokens(ids) if t in special), None)


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of 1s in a mask."""
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


def weighted_mask(mask: list[int], messages: list[dict]) -> list[int]:
    """The assistant mask without the tokens of weight-0 assistant turns (context, not trained on).

    Our ChatML training template leaves those turns outside its markers already. A template with
    markers of its own (the base model's, or one TRL patched) marks every assistant turn: then each
    run of marked tokens is one assistant turn, in order, and the runs of weight-0 turns are cleared."""
    weights = [m.get("weight", 1) for m in messages if m["role"] == "assistant"]
    if 0 not in weights:
        return mask
    runs = _runs(mask)
    if len(runs) == sum(w != 0 for w in weights):
        return mask
    if len(runs) != len(weights):
        raise ValueError(
            f"The chat template marks {len(runs)} spans of assistant tokens for {len(weights)} assistant turns, "
            "so the turns with weight 0 cannot be left out of the loss. Put each assistant turn in one "
            "{% generation %} block of the training template, or drop the weights."
        )
    mask = list(mask)
    for (start, end), weight in zip(runs, weights):
        if weight == 0:
            mask[start:end] = [0] * (end - start)
    return mask


@dataclass(frozen=True)
class ChatReadiness:
    """What `ready_for_chat` changed in a base model: sentences for the log and the model card, and
    the ids of the tokens it added (untrained rows of the embeddings, which training must train)."""

    notes: tuple[str, ...] = ()
    new_tokens: tuple[int, ...] = ()


def ready_for_chat(tokenizer, model) -> "ChatReadiness":
    """Make a base model ready to train and serve chat, in place; returns what was changed.

    A model without a chat template (a pretrained base as published) gets DEFAULT_CHAT_TEMPLATE,
    ChatML: its `<|im_start|>`/`<|im_end|>` tokens are added where the vocabulary lacks them and the
    embeddings resized. Every model's generation config then lists, besides its own end tokens, the
    token its template ends an assistant turn with, so generation stops where training taught it to
    stop (evaluation, serving): Llama 3's `<|eot_id|>`, Gemma's `<end_of_turn>`, Phi-3's `<|end|>`."""
    notes, new_tokens = [], []
    if not tokenizer.chat_template:
        missing = [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
            model.resize_token_embeddings(len(tokenizer))
            new_tokens = tokenizer.convert_tokens_to_ids(missing)
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        added = f"; tokens {', '.join(missing)} added and the embeddings resized to {len(tokenizer)}" if missing else ""
        notes.append(f"The base model has no chat template: it was given the default ChatML template{added}.")
    if tokenizer.pad_token is None:  # batches are padded; the pad token never carries loss
        tokenizer.pad_token = tokenizer.eos_token or CHATML_TOKENS[1]
    end = end_of_turn_token(tokenizer)
    declared = model.generation_config.eos_token_id
    ends = [t for t in (declared if isinstance(declared, list) else [declared]) if t is not None]
    for token in (tokenizer.eos_token, end):
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is not None and token_id not in ends:
            ends.append(token_id)
            if token == end:
                notes.append(f"Generation also ends on {end!r}, the token its chat template ends a turn with.")
    model.generation_config.eos_token_id = ends if len(ends) != 1 else ends[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return ChatReadiness(tuple(notes), tuple(new_tokens))
