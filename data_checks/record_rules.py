"""The per-row features the record suite checks, as plain functions: no files, no Great Expectations.

Each raw row becomes a conversation plus the feature columns of `data_checks.record_suite.FEATURES`:
what is missing (`missing_fields`), what is wrong with the chat's shape (`structure_error`) or its
text (`hygiene_error`), the token length of the formatted example (`n_tokens`, with `truncated`
when it was cut to fit) and which earlier row it repeats (`duplicate_of`). A feature is None when
the row keeps the rule. The tokenizer and the memory of rows seen so far are passed in.
"""

import re
from typing import Protocol

from assets.domain.chat import conversation_text, normalize, with_system
from assets.domain.formats import to_example
from assets.domain.rows import row_location
from data_checks.pii import scan

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Normalized texts share the seen-table with exact ones; the prefix keeps the two kinds of key apart.
NORMALIZED_KEY = "\x00normalized\x00"
# Rows tokenized per call: only the lengths are kept, so a chunk bounds the token ids held at once.
TOKENIZE_CHUNK = 2048
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


def structure_problem(messages: list[dict], kind: str) -> str | None:
    """What is wrong with a conversation's shape, or None: known roles are checked on conversion;
    here, one leading system message, user/assistant alternation, the right last turn, no empty turn."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        return "no user or assistant turns"
    expected = "user"
    for i, m in enumerate(turns, start=1):
        if m["role"] == "system":
            return f"turn {i} is a system message; only the first message may be one"
        if m["role"] != expected:
            return f"turn {i} is from the {m['role']}, expected the {expected} (turns must alternate)"
        expected = "assistant" if expected == "user" else "user"
    if kind == "sft" and turns[-1]["role"] != "assistant":
        return "last turn is from the user; a training example ends with the assistant's answer"
    if kind == "preference" and turns[-1]["role"] != "user":
        return "a preference prompt must end with a user turn"
    for i, m in enumerate(turns, start=1):
        if not m["content"]:
            return f"turn {i} ({m['role']}) is empty"
    return None


def hygiene_problem(texts: list[str]) -> str | None:
    """The first sign of broken text in `texts` (mis-decoded bytes, control characters), or None."""
    for text in texts:
        if "\ufffd" in text:
            return "U+FFFD replacement character (text was decoded with the wrong encoding upstream)"
        if m := CONTROL_CHARS.search(text):
            return f"control character U+{ord(m.group()):04X}"
    return None


def render_lengths(tokenizer, conversations: list[list[dict]], chunk: int = TOKENIZE_CHUNK) -> list[int]:
    """Token count of each conversation with the chat template applied. Tokenized in chunks and
    only the lengths kept: the token ids of a large landing would not fit in memory at once."""
    lengths = []
    for start in range(0, len(conversations), chunk):
        rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[start : start + chunk]]
        lengths += [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    return lengths


def truncate_last_user_turn(messages, tokenizer, max_tokens: int, n_tokens: int):
    """`messages` with the last user turn cut so the example fits, or None when it cannot fit."""
    index = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if index is None:
        return None
    ids = tokenizer(messages[index]["content"], add_special_tokens=False)["input_ids"]
    keep = len(ids) - (n_tokens - max_tokens)
    while keep > 0:
        cut = [dict(m) for m in messages]
        cut[index]["content"] = tokenizer.decode(ids[:keep]).strip()
        if render_lengths(tokenizer, [cut])[0] <= max_tokens:
            return cut
        keep -= CUT_STEP
    return None


def conversation_row(raw: dict, settings: RuleSettings) -> dict:
    """One raw row (with its file's `format` and `mapping`) as a conversation (`kind`, `messages`,
    `chosen`, `rejected`) with the features that need no tokenizer and no other row, its `pii`
    counts (text redacted when settings say so) and conversion `warnings`."""
    kind = "preference" if raw["format"] == "preference" else "sft"
    ex = to_example(raw["record"], raw["format"], raw.get("mapping"))
    pii: dict[str, int] = {}

    def clean(text: str) -> str:
        redacted, counts = scan(text)
        for k, n in counts.items():
            pii[k] = pii.get(k, 0) + n
        return redacted if settings.pii == "redact" else text

    messages = [{"role": m["role"], "content": clean(m["content"])} for m in ex.messages]
    chosen = None if ex.chosen is None else clean(ex.chosen)
    rejected = None if ex.rejected is None else clean(ex.rejected)
    messages = with_system(messages, settings.system_prompt) if messages else messages
    texts = [m["content"] for m in messages] + [t for t in (chosen, rejected) if t is not None]
    structure = ex.problems[0] if ex.problems else None
    if structure is None and not ex.missing:
        structure = structure_problem(messages, kind)
    return {
        **{k: raw[k] for k in ("row_id", "drop", "source_file", "source_line", "format")},
        "kind": kind,
        "messages": messages,
        "chosen": chosen,
        "rejected": rejected,
        "missing_fields": ", ".join(ex.missing) or None,
        "structure_error": structure,
        "hygiene_error": hygiene_problem(texts),
        "pii": pii or None,
        "warnings": ", ".join(sorted(set(ex.warnings))) or None,
    }


def with_features(raw: list[dict], tokenizer, settings: RuleSettings, seen: Seen) -> list[dict]:
    """One row per raw row (with its file's `format`): the conversation and every feature column
    the suite checks, plus `pii` counts and conversion `warnings`. `seen` remembers earlier rows
    (earlier batches too) for duplicate detection."""
    rows = [conversation_row(r, settings) for r in raw]
    measure(rows, tokenizer, settings)
    mark_duplicates(rows, seen)
    return rows


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
    for r, n in zip(owners, render_lengths(tokenizer, conversations)):
        r["n_tokens"] = max(r["n_tokens"] or 0, n)
    if settings.truncate_over_long:
        for r in rows:
            if r["n_tokens"] is not None and r["n_tokens"] > settings.max_tokens and r["kind"] == "sft":
                _truncate(r, tokenizer, settings.max_tokens)


def _truncate(row: dict, tokenizer, max_tokens: int) -> None:
    cut = truncate_last_user_turn(row["messages"], tokenizer, max_tokens, row["n_tokens"])
    if cut is not None:
        row["messages"], row["n_tokens"], row["truncated"] = cut, render_lengths(tokenizer, [cut])[0], True


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
