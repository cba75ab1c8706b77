"""Rules about chat examples shared by the data, training and evaluation assets.

Shared, not an asset: how an example is normalized, keyed, split and
rendered for training must be identical wherever it is measured, trained on or scored.
"""

import hashlib

from assets.domain.tool_calls import render_text, template_inputs

DEFAULT_SYSTEM_PROMPT = "You are a precise assistant. Follow the instruction exactly."

# ChatML rendered exactly as SmolLM2's own template renders it, plus the {% generation %} markers
# TRL needs to train on the assistant's tokens only. The end-of-turn token sits inside the markers
# so the model learns to stop. An assistant turn with weight 0 is context: same text, no markers.
CHATML_TRAINING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' and (message['weight'] is not defined or message['weight'] != 0) %}"
    "{{- '<|im_start|>assistant\\n' }}{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


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


def training_chat_template(tokenizer) -> str | None:
    """A chat template with {% generation %} markers for assistant-only loss, or None if the
    tokenizer's own template already has them.

    TRL patches the templates it knows; SmolLM2's ChatML template is not among them, so ChatML
    templates get the equivalent above. Anything else is refused with a way out.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template or ""
    if has_generation_markers(template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        if "<|im_start|>" in template:
            return CHATML_TRAINING_TEMPLATE
        raise ValueError(
            "The base model's chat template has no {% generation %} markers and TRL cannot patch it, so "
            "the loss cannot be limited to the assistant's tokens. Add the markers to the template."
        ) from None


def prompt_text(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text a model is prompted with for an example: every turn but a final assistant answer
    (system included), rendered with `tools` as training renders it, ending with the generation
    prompt. Tokenize with `add_special_tokens=False` (the template wrote them). The expected reply is
    `tool_calls.reply_text(messages[-1])`; a generated one reads back with `tool_calls.parse_reply`."""
    turns = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return render_text(tokenizer, turns, tools, add_generation_prompt=True)


def training_tokens(tokenizer, messages: list[dict], tools: list[dict] | None, chat_template: str) -> dict:
    """One conversation as it is trained on: `input_ids` and `assistant_masks` (1 on the tokens that
    carry loss), rendered by `chat_template` (one with {% generation %} markers) the way every stage
    renders it (`tool_calls.template_inputs`: the template's own tool support, else the fallback)."""
    rendered, native_tools = template_inputs(messages, tools, tokenizer.chat_template)
    encoded = tokenizer.apply_chat_template(
        rendered,
        chat_template=chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        **({"tools": native_tools} if native_tools else {}),
    )
    mask = weighted_mask(list(encoded["assistant_masks"]), messages)
    if 1 not in mask:
        raise ValueError(
            "An example has no assistant tokens to train on: the training template marks none "
            "(no {% generation %} markers?) or every assistant turn has weight 0."
        )
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


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
