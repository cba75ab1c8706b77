"""The instruction-data formats the pipeline reads, and how a record of each becomes a conversation.

Shared, not an asset: `raw_records` detects each file's format and the validation
and formatting assets convert records with the same rules, so they live in one place.

A conversion never raises on bad content: it returns what it could build plus the problems it
found, and the record suite turns those into rejection reasons.
"""

import json
import numbers
from dataclasses import dataclass, field

# format -> fields a record must have; detection tries them in this order (most specific first).
REQUIRED_FIELDS = {
    "openai_chat": ("messages",),
    "sharegpt": ("conversations",),
    "hosted_preference": ("input", "preferred_output", "non_preferred_output"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "dolly": ("instruction", "response"),
    "alpaca": ("instruction", "output"),
}
# Formats whose records are preference pairs (a prompt, a chosen and a rejected answer).
PREFERENCE_FORMATS = ("hosted_preference", "preference")
MAPPED = "mapped"
MAPPABLE_FIELDS = ("instruction", "input", "output", "system")
# The field a record names its category in unless `ingest.category_field` says otherwise (Dolly's, for one).
CATEGORY_FIELD = "category"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
CHAT_ROLES = ("system", "user", "assistant")
# OpenAI chat rows may also call tools: `tool` turns answer an assistant turn's `tool_calls`.
TOOL_CHAT_ROLES = {r: r for r in (*CHAT_ROLES, "tool")}
# The per-turn weights the hosted chat format allows on assistant turns: 0 is context, 1 is trained on.
TURN_WEIGHTS = (0, 1)


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
    tools: list[dict] | None = None
    """The functions the conversation may call (OpenAI `tools`), or None."""
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


def category_of(record: dict, field: str | None) -> str | None:
    """A record's category, what evaluation results are broken down by beside drop and file: its
    `field` (the file's `FileSummary.category`) as text, whatever the format; None when the file has no
    such field (`field` None) or the record leaves it blank."""
    return (as_text(record.get(field)) or None) if field else None


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
    """A list or object field as read: CSV cells hold them as JSON text, Parquet may give numpy arrays."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if hasattr(value, "tolist") and not isinstance(value, str):
        return value.tolist()
    return value


def _chat_messages(
    items, example: Example, name: str, role_key="role", content_key="content", roles=None, tool_calling=False
):
    """`items` as chat messages {role, content}; with `tool_calling`, plus `tool` turns, assistant
    `tool_calls` (empty content allowed), a tool turn's `tool_call_id` and an assistant turn's `weight`."""
    messages = []
    items = _parsed_list(items)
    if not isinstance(items, (list, tuple)):
        example.problems.append(f"{name} is not a list of messages")
        return messages
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            example.problems.append(f"{name}[{i}] is not an object")
            continue
        if "function_call" in item or ("tool_calls" in item and not tool_calling):
            example.warnings.append("function_call ignored (use tool_calls)" if tool_calling else "tool calls ignored")
        raw_role = item.get(role_key)
        role = (roles or (TOOL_CHAT_ROLES if tool_calling else {r: r for r in CHAT_ROLES})).get(raw_role)
        if role is None:
            example.problems.append(f"{name}[{i}] has unknown role {raw_role!r}")
            continue
        content = item.get(content_key)
        if content is not None and not isinstance(content, str):
            example.problems.append(f"{name}[{i}] content is not text")
            content = ""
        messages.append({"role": role, "content": as_text(content)})
        if tool_calling:
            _tool_fields(item, messages[-1], example, f"{name}[{i}]")
    return messages


def _tool_fields(item: dict, turn: dict, example: Example, where: str) -> None:
    """Add what tool calling puts on a turn to `turn`: an assistant's `tool_calls`, the
    `tool_call_id` a tool reply answers, an assistant turn's `weight`. Absent fields add no key."""
    role = turn["role"]
    calls = _parsed_list(item.get("tool_calls"))
    if not is_blank(calls):
        if role == "assistant":
            turn["tool_calls"] = _tool_calls(calls, example, where)
        else:
            example.problems.append(f"{where} ({role}) has tool_calls; only assistant turns make calls")
    if role == "tool" and not is_blank(item.get("tool_call_id")):
        turn["tool_call_id"] = str(item["tool_call_id"])
    weight = item.get("weight")
    if weight is None or weight != weight:  # absent, or NaN where a Parquet column had none
        return
    if role != "assistant":
        example.problems.append(f"{where} ({role}) has a weight; only assistant turns have one")
    elif isinstance(weight, bool) or not isinstance(weight, numbers.Real) or weight not in TURN_WEIGHTS:
        example.problems.append(f"{where} has weight {weight!r}; a turn's weight is 0 or 1")
    else:
        turn["weight"] = int(weight)


def _tool_calls(calls, example: Example, where: str) -> list[dict]:
    """An assistant turn's calls in the OpenAI shape, arguments as JSON text (an object given as
    such is written as JSON); whether the arguments parse is a record rule, checked later."""
    if not isinstance(calls, list):
        example.problems.append(f"{where} tool_calls is not a list")
        return []
    normalized = []
    for k, call in enumerate(calls, start=1):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name.strip():
            example.problems.append(f"{where} tool call {k} has no function name")
            continue
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False, default=str)
        id_ = {} if is_blank(call.get("id")) else {"id": str(call["id"])}
        normalized.append({**id_, "type": "function", "function": {"name": name, "arguments": arguments}})
    return normalized


def _without_nulls(value):
    """`value` with null-valued object keys dropped, at any depth. Parquet stores nested objects as
    structs holding every key any row has, so a tool schema read from Parquet gains null keys."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _tools(value, example: Example) -> list[dict] | None:
    """A row's `tools` (functions it may call), or None when it has none."""
    value = _parsed_list(value)
    if is_blank(value):
        return None
    if not isinstance(value, list):
        example.problems.append("tools is not a list of functions")
        return None
    tools = []
    for i, tool in enumerate(_without_nulls(value), start=1):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name.strip():
            example.problems.append(f"tools[{i}] has no function name")
            continue
        tools.append(tool)
    return tools or None


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
        example.tools = _tools(record.get("tools"), example)
        example.messages = _chat_messages(record.get("messages"), example, "messages", tool_calling=True)
    elif fmt == "sharegpt":
        example.messages = _chat_messages(
            record.get("conversations"), example, "conversations", "from", "value", SHAREGPT_ROLES
        )
    elif fmt == "prompt_completion":
        example.messages = _turns(record.get("prompt"), example, "prompt") + [
            {"role": "assistant", "content": _answer(record.get("completion"), example, "completion")}
        ]
    elif fmt == "hosted_preference":
        _hosted_preference(record, example)
    elif fmt == "preference":
        example.messages = _turns(record.get("prompt"), example, "prompt")
        example.chosen = _answer(record.get("chosen"), example, "chosen")
        example.rejected = _answer(record.get("rejected"), example, "rejected")
    return example


def _hosted_preference(record: dict, example: Example) -> None:
    """A hosted fine-tuning service's preference row: `input.messages` is the prompt, and
    `preferred_output` / `non_preferred_output` are lists ending with the assistant's answer."""
    source = _parsed_list(record.get("input"))
    if not isinstance(source, dict):
        if not is_blank(source):
            example.problems.append("input is not an object with messages")
        return
    if is_blank(source.get("messages")):
        example.missing.append("input.messages")
        return
    example.messages = _chat_messages(source.get("messages"), example, "input.messages")
    example.chosen = _answer(record.get("preferred_output"), example, "preferred_output")
    example.rejected = _answer(record.get("non_preferred_output"), example, "non_preferred_output")
