"""Rules about chat examples shared by the data, training and evaluation assets.

Shared, not an asset: how an example is normalized, keyed, split and
rendered for training must be identical wherever it is measured, trained on or scored.
"""

import hashlib
import re

DEFAULT_SYSTEM_PROMPT = "You are a precise assistant. Follow the instruction exactly."

# ChatML rendered exactly as SmolLM2's own template renders it, plus the {% generation %} markers
# TRL needs to train on the assistant's tokens only. The end-of-turn token sits inside the markers
# so the model learns to stop.
CHATML_TRAINING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def normalize(value: str) -> str:
    """Case- and whitespace-insensitive form used to find duplicates and to split."""
    return re.sub(r"\s+", " ", value).strip().casefold()


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """`messages` with `system_prompt` in front unless they open with a system message already."""
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def prompt_turns(messages: list[dict]) -> list[dict]:
    """The turns a model is prompted with: all but a final assistant answer, system excluded."""
    turns = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return [m for m in turns if m["role"] != "system"]


def conversation_text(messages: list[dict], *answers: str | None) -> str:
    parts = [f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system"]
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
