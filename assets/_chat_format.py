"""How a record becomes a chat example; shared by the data, training and evaluation assets.

Not an asset itself (hence the underscore): the rules here must be identical wherever an example
is measured, trained on or scored, so they live in one place.
"""

import hashlib
import re

# The columns of a canonical record (alpaca style, plus an optional per-row system prompt).
INSTRUCTION, INPUT, OUTPUT, SYSTEM = "instruction", "input", "output", "system"
RECORD_COLUMNS = (INSTRUCTION, INPUT, OUTPUT, SYSTEM)

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


def text(value) -> str:
    """A cell as text: missing values (None, NaN) become the empty string."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def user_content(record: dict) -> str:
    instruction, extra = text(record.get(INSTRUCTION)).strip(), text(record.get(INPUT)).strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def to_messages(record: dict) -> list[dict]:
    """system / user / assistant messages for one record (its `system` cell must already be set)."""
    return [
        {"role": "system", "content": text(record.get(SYSTEM))},
        {"role": "user", "content": user_content(record)},
        {"role": "assistant", "content": text(record.get(OUTPUT)).strip()},
    ]


def normalize(value: str) -> str:
    """Case- and whitespace-insensitive form used to find duplicates and to split."""
    return re.sub(r"\s+", " ", value).strip().casefold()


def example_key(record: dict) -> str:
    """Normalized identity of a whole example (prompt and answer): two rows with it are duplicates."""
    return normalize(user_content(record)) + "\x1f" + normalize(text(record.get(OUTPUT)))


def prompt_hash(record: dict) -> str:
    """Content hash of the normalized prompt; the train/eval split is a pure function of it."""
    return hashlib.sha256(normalize(user_content(record)).encode("utf-8")).hexdigest()


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
