"""The instruction-data formats the pipeline reads, and how a record of each becomes a conversation.

Shared, not an asset: `raw_records` detects each file's format and the validation
and formatting assets convert records with the same rules, so they live in one place.

A conversion never raises on bad content: it returns what it could build plus the problems it
found, and the record suite turns those into rejection reasons.
"""

import json
from dataclasses import dataclass, field

# format -> fields a record must have; detection tries them in this order (most specific first).
REQUIRED_FIELDS = {
    "openai_chat": ("messages",),
    "sharegpt": ("conversations",),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "dolly": ("instruction", "response"),
    "alpaca": ("instruction", "output"),
}
MAPPED = "mapped"
MAPPABLE_FIELDS = ("instruction", "input", "output", "system")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
CHAT_ROLES = ("system", "user", "assistant")


def detect_format(columns: set[str]) -> str | None:
    """The first format whose required fields are all among `columns`, else None."""
    for name, required in REQUIRED_FIELDS.items():
        if set(required) <= columns:
            return name
    return None


@dataclass
class Example:
    """A record as chat: `messages` ends with the assistant's answer, except for preference pairs,
    whose `messages` hold the prompt and whose answers are `chosen` and `rejected`."""

    messages: list[dict] = field(default_factory=list)
    chosen: str | None = None
    rejected: str | None = None
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_blank(value) -> bool:
    if value is None or (isinstance(value, float) and value != value):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
        return len(value) == 0
    return False


def as_text(value) -> str:
    return "" if is_blank(value) else str(value).strip()


def _turns(value, example: Example, name: str) -> list[dict]:
    """A prompt/answer field that may be plain text or a list of chat messages."""
    value = _parsed_list(value)
    if isinstance(value, list):
        return _chat_messages(value, example, name)
    return [{"role": "user", "content": as_text(value)}]


def _answer(value, example: Example, name: str) -> str:
    value = _parsed_list(value)
    if isinstance(value, list):
        turns = _chat_messages(value, example, name)
        if not turns or turns[-1]["role"] != "assistant":
            example.problems.append(f"{name} does not end with an assistant message")
            return ""
        return turns[-1]["content"]
    return as_text(value)


def _parsed_list(value):
    """A list field as read: CSV cells hold lists as JSON text, Parquet may give numpy arrays."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if hasattr(value, "tolist") and not isinstance(value, str):
        return value.tolist()
    return value


def _chat_messages(items, example: Example, name: str, role_key="role", content_key="content", roles=None):
    messages = []
    items = _parsed_list(items)
    if not isinstance(items, (list, tuple)):
        example.problems.append(f"{name} is not a list of messages")
        return messages
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            example.problems.append(f"{name}[{i}] is not an object")
            continue
        if "tool_calls" in item or "function_call" in item:
            example.warnings.append("tool calls ignored")
        raw_role = item.get(role_key)
        role = (roles or {r: r for r in CHAT_ROLES}).get(raw_role)
        if role is None:
            example.problems.append(f"{name}[{i}] has unknown role {raw_role!r}")
            continue
        content = item.get(content_key)
        if content is not None and not isinstance(content, str):
            example.problems.append(f"{name}[{i}] content is not text")
            content = ""
        messages.append({"role": role, "content": as_text(content)})
    return messages


def to_example(record: dict, fmt: str, mapping: dict[str, str] | None = None) -> Example:
    """Convert one raw record of format `fmt` (a REQUIRED_FIELDS key, or MAPPED with `mapping`)."""
    example = Example()
    if fmt == MAPPED:
        record = {ours: record.get(theirs) for ours, theirs in (mapping or {}).items()}
        fmt = "alpaca"
    required = REQUIRED_FIELDS[fmt]
    example.missing = [f for f in required if is_blank(record.get(f))]

    if fmt == "alpaca":
        user = as_text(record.get("instruction"))
        if not is_blank(record.get("input")):
            user = f"{user}\n\n{as_text(record.get('input'))}"
        system = [] if is_blank(record.get("system")) else [{"role": "system", "content": as_text(record["system"])}]
        example.messages = system + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": as_text(record.get("output"))},
        ]
    elif fmt == "dolly":
        user = as_text(record.get("instruction"))
        if not is_blank(record.get("context")):
            user = f"{user}\n\n{as_text(record.get('context'))}"
        example.messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": as_text(record.get("response"))},
        ]
    elif fmt == "openai_chat":
        if not is_blank(record.get("tools")):
            example.warnings.append("tools ignored")
        example.messages = _chat_messages(record.get("messages"), example, "messages")
    elif fmt == "sharegpt":
        example.messages = _chat_messages(
            record.get("conversations"), example, "conversations", "from", "value", SHAREGPT_ROLES
        )
    elif fmt == "prompt_completion":
        example.messages = _turns(record.get("prompt"), example, "prompt") + [
            {"role": "assistant", "content": _answer(record.get("completion"), example, "completion")}
        ]
    elif fmt == "preference":
        example.messages = _turns(record.get("prompt"), example, "prompt")
        example.chosen = _answer(record.get("chosen"), example, "chosen")
        example.rejected = _answer(record.get("rejected"), example, "rejected")
    return example
