"""The per-row features the record suite checks, as plain functions: no files, no Great Expectations.

Each raw row becomes a conversation plus the feature columns of `data_checks.record_suite.FEATURES`:
what is missing (`missing_fields`), what is wrong with the chat's shape (`structure_error`), its
tool calls (`tool_call_error`) or its text (`hygiene_error`), the token length of the formatted
example (`n_tokens`, with `truncated` when it was cut to fit) and which earlier row it repeats
(`duplicate_of`). A feature is None when the row keeps the rule. The tokenizer and the memory of
rows seen so far are passed in.
"""

import json
import re
from dataclasses import dataclass
from typing import Protocol

from assets.domain.chat import conversation_text, normalize, with_system
from assets.domain.formats import PREFERENCE_FORMATS, to_example
from assets.domain.rows import row_location
from assets.domain.token_lengths import TOKENIZE_CHUNK, token_lengths
from data_checks.pii import scan

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Normalized texts share the seen-table with exact ones; the prefix keeps the two kinds of key apart.
NORMALIZED_KEY = "\x00normalized\x00"
# Re-tokenizing at a cut can add a token or two, so each retry cuts this many tokens more.
CUT_STEP = 4


class RuleSettings(Protocol):
    """What the rules read from the validation config (`ValidationConfig` has these fields)."""

    @property
    def max_tokens(self) -> int: ...
    @property
    def truncate_over_long(self) -> bool: ...
    @property
    def system_prompt(self) -> str: ...
    @property
    def pii(self) -> str: ...


class Seen(Protocol):
    """Where texts were first seen (`resources.records.FirstSeen`, on disk)."""

    def check(self, texts: list[str], places: list[str]) -> list[str | None]: ...


def _order_problem(turns: list[dict]) -> str | None:
    """The first turn out of order: users and the assistant alternate, except that an assistant turn
    with tool calls is followed by one or more tool replies and then the assistant again."""
    expected = "user"
    for i, m in enumerate(turns, start=1):
        role = m["role"]
        if role == "system":
            return f"turn {i} is a system message; only the first message may be one"
        if role == "tool":
            if expected not in ("tool", "tool or assistant"):
                return f"turn {i} is a tool reply, but the turn before it made no tool call"
            expected = "tool or assistant"
            continue
        if expected == "tool":
            return f"turn {i} is from the {role}, expected a tool reply to the tool calls of turn {i - 1}"
        if expected == "tool or assistant" and role != "assistant":
            return f"turn {i} is from the {role}, expected the assistant after the tool replies"
        if expected in ("user", "assistant") and role != expected:
            return f"turn {i} is from the {role}, expected the {expected} (turns must alternate)"
        expected = "assistant" if role == "user" else "tool" if m.get("tool_calls") else "user"
    return None


def structure_problem(messages: list[dict], kind: str) -> str | None:
    """What is wrong with a conversation's shape, or None: known roles are checked on conversion;
    here, one leading system message, turn order (`_order_problem`), the right last turn, no empty
    turn (an assistant turn may hold tool calls instead of text), some assistant turn to train on."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        return "no user or assistant turns"
    if order := _order_problem(turns):
        return order
    if kind == "sft" and turns[-1]["role"] != "assistant":
        return f"last turn is from the {turns[-1]['role']}; a training example ends with the assistant's answer"
    if kind == "preference" and turns[-1]["role"] != "user":
        return "a preference prompt must end with a user turn"
    for i, m in enumerate(turns, start=1):
        if not m["content"] and not m.get("tool_calls"):
            return f"turn {i} ({m['role']}) is empty"
    if kind == "sft" and all(m.get("weight") == 0 for m in turns if m["role"] == "assistant"):
        return "every assistant turn has weight 0; nothing to train on"
    return None


def arguments_problem(arguments: str) -> str | None:
    """What is wrong with a tool call's arguments (JSON text of an object), or None."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as err:
        return f"are not valid JSON ({err.msg} at column {err.colno}): {arguments[:80]!r}"
    if not isinstance(value, dict):
        return f"are not a JSON object: {arguments[:80]!r}"
    return None


def tool_call_problem(messages: list[dict], tools: list[dict] | None) -> str | None:
    """What is wrong with a conversation's tool calls, or None: each call names one of the row's
    `tools` (when it lists any) and has arguments that parse as a JSON object; each tool reply names,
    by `tool_call_id`, a call an earlier assistant turn made."""
    names = [t["function"]["name"] for t in tools or []]
    made: set[str] = set()
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, m in enumerate(turns, start=1):
        for call in m.get("tool_calls") or []:
            name = call["function"]["name"]
            if names and name not in names:
                return f"turn {i} calls {name!r}, which is not among the row's tools ({', '.join(names)})"
            if problem := arguments_problem(call["function"]["arguments"]):
                return f"turn {i} calls {name!r} with arguments that {problem}"
            made.update([call["id"]] if "id" in call else [])
        if m["role"] == "tool":
            answered = m.get("tool_call_id")
            if answered is None:
                return f"turn {i} is a tool reply without a tool_call_id naming the call it answers"
            if answered not in made:
                return f"turn {i} answers tool call {answered!r}, which no earlier assistant turn made"
    return None


def answers_problem(chosen: str | None, rejected: str | None) -> str | None:
    """What is wrong with a preference pair's answers, or None: both present, and different."""
    if chosen is None and rejected is None:
        return None
    if not chosen or not rejected:
        return f"the {'chosen' if not chosen else 'rejected'} answer is empty"
    if normalize(chosen) == normalize(rejected):
        return "chosen and rejected answers are the same (up to case and whitespace): nothing to prefer"
    return None


def hygiene_problem(texts: list[str]) -> str | None:
    """The first sign of broken text in `texts` (mis-decoded bytes, control characters), or None."""
    for text in texts:
        if "\ufffd" in text:
            return "U+FFFD replacement character (text was decoded with the wrong encoding upstream)"
        if m := CONTROL_CHARS.search(text):
            return f"control character U+{ord(m.group()):04X}"
    return None


def render_lengths(
    tokenizer, conversations: list[list[dict]], chunk: int = TOKENIZE_CHUNK, tools: list | None = None
) -> list[int]:
    """Token count of each conversation with the chat template applied, rendered as training renders
    it (`tools[i]`, the functions conversation i may call, included): exactly what the tokenizer
    counts, computed by `token_lengths` (fast for byte-level BPE tokenizers such as the bundled
    one). Only the lengths are kept: the token ids of a large landing would not fit in memory."""
    return token_lengths(tokenizer).of(conversations, tools, chunk)


def truncate_last_user_turn(messages, tokenizer, max_tokens: int, n_tokens: int, tools: list | None = None):
    """`messages` with the last user turn cut so the example fits, or None when it cannot fit."""
    index = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if index is None:
        return None
    ids = tokenizer(messages[index]["content"], add_special_tokens=False)["input_ids"]
    keep = len(ids) - (n_tokens - max_tokens)
    while keep > 0:
        cut = [dict(m) for m in messages]
        cut[index]["content"] = tokenizer.decode(ids[:keep]).strip()
        if render_lengths(tokenizer, [cut], tools=[tools])[0] <= max_tokens:
            return cut
        keep -= CUT_STEP
    return None


def conversation_row(raw: dict, settings: RuleSettings) -> dict:
    """One raw row (with its file's `format` and `mapping`) as a conversation (`kind`, `messages`,
    `chosen`, `rejected`) with the features that need no tokenizer and no other row, its `pii`
    counts (text redacted when settings say so) and conversion `warnings`."""
    kind = "preference" if raw["format"] in PREFERENCE_FORMATS else "sft"
    ex = to_example(raw["record"], raw["format"], raw.get("mapping"))
    pii: dict[str, int] = {}

    def clean(text: str) -> str:
        redacted, counts = scan(text)
        for k, n in counts.items():
            pii[k] = pii.get(k, 0) + n
        return redacted if settings.pii == "redact" else text

    def clean_turn(m: dict) -> dict:
        calls = [{**c, "function": {**c["function"], "arguments": clean(c["function"]["arguments"])}}
                 for c in m.get("tool_calls") or []]  # fmt: skip
        return {**m, "content": clean(m["content"]), **({"tool_calls": calls} if calls else {})}

    messages = [clean_turn(m) for m in ex.messages]
    chosen = None if ex.chosen is None else clean(ex.chosen)
    rejected = None if ex.rejected is None else clean(ex.rejected)
    messages = with_system(messages, settings.system_prompt) if messages else messages
    arguments = [c["function"]["arguments"] for m in messages for c in m.get("tool_calls") or []]
    texts = [m["content"] for m in messages] + arguments + [t for t in (chosen, rejected) if t is not None]
    structure = ex.problems[0] if ex.problems else None
    if structure is None and not ex.missing:
        structure = structure_problem(messages, kind) or answers_problem(chosen, rejected)
    # Calls are judged in a well-formed conversation only, so a broken row is not blamed twice.
    tool_calls = tool_call_problem(messages, ex.tools) if structure is None and not ex.missing else None
    return {
        **{k: raw[k] for k in ("row_id", "drop", "source_file", "source_line", "format")},
        "kind": kind,
        "messages": messages,
        "chosen": chosen,
        "rejected": rejected,
        "tools": ex.tools,
        "missing_fields": ", ".join(ex.missing) or None,
        "structure_error": structure,
        "tool_call_error": tool_calls,
        "hygiene_error": hygiene_problem(texts),
        "pii": pii or None,
        "warnings": ", ".join(sorted(set(ex.warnings))) or None,
    }


def with_features(raw: list[dict], tokenizer, settings: RuleSettings, seen: Seen) -> list[dict]:
    """One row per raw row (with its file's `format`): the conversation and every feature column
    the suite checks, plus `pii` counts and conversion `warnings`. `seen` remembers earlier rows
    (earlier batches too) for duplicate detection."""
    rows = rows_with_features(raw, tokenizer, settings)
    mark_duplicates(rows, seen)
    return rows


def rows_with_features(raw: list[dict], tokenizer, settings: RuleSettings) -> list[dict]:
    """`with_features` but for `duplicate_of`, which needs every earlier row: what a worker
    process can compute for a batch on its own."""
    rows = [conversation_row(r, settings) for r in raw]
    measure(rows, tokenizer, settings)
    return rows


@dataclass(frozen=True)
class RuleValues:
    """The settings the rules read, as plain values a worker process receives."""

    max_tokens: int
    truncate_over_long: bool
    system_prompt: str
    pii: str

    @classmethod
    def of(cls, settings: RuleSettings) -> "RuleValues":
        return cls(settings.max_tokens, settings.truncate_over_long, settings.system_prompt, settings.pii)


# A worker process's tokenizer and settings, set once by `start_feature_worker`.
_WORKER: dict = {}


def start_feature_worker(tokenizer, settings: RuleValues) -> None:
    """Initializer of a worker process that runs `features_in_worker`."""
    _WORKER.update(tokenizer=tokenizer, settings=settings)


def features_in_worker(raw: list[dict]) -> list[dict]:
    return rows_with_features(raw, _WORKER["tokenizer"], _WORKER["settings"])


def measure(rows: list[dict], tokenizer, settings: RuleSettings) -> None:
    """Set `n_tokens`, the token length of each formatted example (the longer answer for preference
    pairs), and `truncated`: over-long rows are cut to fit when settings say so (`messages` replaced)."""
    conversations, owners = [], []
    for r in rows:
        r["n_tokens"], r["truncated"] = None, False
        if not r["messages"]:
            continue
        if r["kind"] == "preference":
            for answer in (r["chosen"], r["rejected"]):
                conversations.append(r["messages"] + [{"role": "assistant", "content": answer or ""}])
                owners.append(r)
        else:
            conversations.append(r["messages"])
            owners.append(r)
    tools = [r.get("tools") for r in owners]
    for r, n in zip(owners, render_lengths(tokenizer, conversations, tools=tools)):
        r["n_tokens"] = max(r["n_tokens"] or 0, n)
    if settings.truncate_over_long:
        for r in rows:
            if r["n_tokens"] is not None and r["n_tokens"] > settings.max_tokens and r["kind"] == "sft":
                _truncate(r, tokenizer, settings.max_tokens)


def _truncate(row: dict, tokenizer, max_tokens: int) -> None:
    tools = row.get("tools")
    cut = truncate_last_user_turn(row["messages"], tokenizer, max_tokens, row["n_tokens"], tools)
    if cut is not None:
        row["messages"], row["truncated"] = cut, True
        row["n_tokens"] = render_lengths(tokenizer, [cut], tools=[tools])[0]


def duplicate_note(exact: str | None, similar: str | None) -> str | None:
    """The `duplicate_of` feature from where a row's exact and its normalized text were first seen."""
    if exact:
        return f"exact duplicate of {exact}"
    if similar:
        return f"same as {similar} up to case and whitespace"
    return None


def mark_duplicates(rows: list[dict], seen: Seen) -> None:
    """Set `duplicate_of`: the earlier row a row repeats (exactly, or up to case and whitespace),
    else None. Rows are compared with every row `seen` so far, in landing order; the first is kept."""
    texts = [conversation_text(r["messages"], r["chosen"], r["rejected"]) for r in rows]
    places = [row_location(r) for r in rows]
    exact = seen.check(texts, places)
    normal = seen.check([NORMALIZED_KEY + normalize(t) for t in texts], places)
    for r, same, similar in zip(rows, exact, normal):
        r["duplicate_of"] = duplicate_note(same, similar)
