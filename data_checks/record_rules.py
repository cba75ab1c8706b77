"""The per-row features the record suite checks, as plain functions: no files, no Great Expectations.

Each raw row becomes a conversation plus the feature columns of `data_checks.record_suite.FEATURES`:
what is missing (`missing_fields`), what is wrong with the chat's shape (`structure_error`), its
tool calls (`tool_call_error`) or its text (`hygiene_error`), whether the base model's chat template
refuses it (`template_error`), the token length of the formatted example (`n_tokens`; an over-long
row is cut to fit, `truncated`, with what was cut in `truncation`), which earlier row it repeats
(`duplicate_of`), what is wrong with its answer (the `answer_*` columns of
`data_checks.answer_quality`) and whether its `language` is one expected (`language_error`,
`data_checks.languages`). A feature is None when the row keeps the rule. The tokenizer and the memory of
rows seen so far are passed in.
"""

import json
import re
from dataclasses import dataclass
from typing import Protocol

from assets.domain.chat import conversation_text, normalize, with_system
from assets.domain.formats import PREFERENCE_FORMATS, category_of, to_example
from assets.domain.rows import row_location
from assets.domain.token_lengths import TOKENIZE_CHUNK, token_lengths
from data_checks.answer_quality import COLUMNS as ANSWER_COLUMNS
from data_checks.answer_quality import AnswerRules, answer_features
from data_checks.languages import LanguageRule, language_features
from data_checks.pii import scan

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Normalized texts share the seen-table with exact ones; the prefix keeps the two kinds of key apart.
NORMALIZED_KEY = "\x00normalized\x00"
# Re-tokenizing at a cut can add a token or two, so each retry cuts this many tokens more.
CUT_STEP = 4
# Characters of a chat template's refusal kept as a rejected row's reason.
REFUSAL_CHARS = 300


class RuleSettings(Protocol):
    """What the rules read from the validation config (`RuleValues`; `ValidationConfig` has these
    fields too, with max_tokens a number rather than 'auto')."""

    @property
    def max_tokens(self) -> int: ...
    @property
    def truncate_over_long(self) -> bool: ...
    @property
    def system_prompt(self) -> str: ...
    @property
    def pii(self) -> str: ...
    @property
    def answer_quality(self) -> AnswerRules: ...
    @property
    def language(self) -> LanguageRule: ...


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


# What was cut from a row to fit max_tokens (its `truncation`), counted per drop and per run.
DROPPED_TURNS = "earlier turns dropped"
CUT_USER_TURN = "last user turn cut"


@dataclass(frozen=True)
class Fit:
    """An over-long conversation cut to the budget: the cut `messages` and their length, with what
    was cut; or, when even its shortest form is over the budget, `messages` None and the length of
    that shortest form (its system turn, a minimal prompt and its final answer)."""

    messages: list[dict] | None
    n_tokens: int
    cut: str | None = None


def exchanges(turns: list[dict]) -> list[list[dict]]:
    """`turns` as exchanges, each from a user turn up to the next one (the assistant's reply, with
    any tool calls and tool replies): what can be dropped whole without breaking the alternation."""
    groups: list[list[dict]] = []
    for m in turns:
        if m["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(m)
    return groups


def fit_to_budget(messages: list[dict], lengths, tokenizer, max_tokens: int) -> Fit:
    """`messages` cut to at most `max_tokens`, as the mature trainers cut: context goes first, the
    answer never. The earliest whole exchanges after the system turn are dropped (as few as fit);
    if even none of them is too many, the text of the last user turn is cut from its end. The system
    turn and everything from the last user turn on (the final answer, with its tool calls and
    replies) are kept whole. `lengths(conversations)` measures candidates as `measure` does (a
    preference prompt by its longer answer); only over-long rows pay for these renders."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None or last_user < len(head):  # nothing to cut (a broken row: its rule says so)
        return Fit(None, lengths([messages])[0])
    earlier, tail = exchanges(messages[len(head) : last_user]), messages[last_user:]
    measured: dict[int, int] = {}

    def without(k: int) -> list[dict]:
        return head + [m for group in earlier[k:] for m in group] + tail

    def length(k: int) -> int:
        if k not in measured:
            measured[k] = lengths([without(k)])[0]
        return measured[k]

    if earlier and length(len(earlier)) <= max_tokens:
        low, high = 1, len(earlier)  # the fewest exchanges to drop: lengths shrink as more go
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if length(mid) <= max_tokens else (mid + 1, high)
        return Fit(without(low), length(low), DROPPED_TURNS)
    fit = cut_user_turn(head + tail, len(head), lengths, tokenizer, max_tokens)
    if fit.messages is not None and earlier:
        return Fit(fit.messages, fit.n_tokens, f"{DROPPED_TURNS}, {CUT_USER_TURN}")
    return fit


def cut_user_turn(messages: list[dict], index: int, lengths, tokenizer, max_tokens: int) -> Fit:
    """`messages` with the text of turn `index` (a user turn) cut from its end to fit `max_tokens`,
    keeping at least one of its tokens; a Fit without messages when even that is too long."""

    def with_text(text: str) -> list[dict]:
        return [*messages[:index], {**messages[index], "content": text}, *messages[index + 1 :]]

    floor = lengths([with_text("")])[0]
    if floor > max_tokens:
        return Fit(None, floor)
    ids = tokenizer(messages[index]["content"], add_special_tokens=False)["input_ids"]
    # Lengths add up across turns (to a token or two at the seams), so the first guess usually fits.
    keep = max(1, min(len(ids) - 1, max_tokens - floor))
    while True:
        # A cut inside a multi-byte character decodes to U+FFFD: not kept in training text.
        candidate = with_text(tokenizer.decode(ids[:keep]).rstrip("\ufffd").strip())
        n = lengths([candidate])[0]
        if n <= max_tokens:
            return Fit(candidate, n, CUT_USER_TURN)
        if keep == 1:
            return Fit(None, n)
        keep = max(1, keep - CUT_STEP)


def conversation_row(raw: dict, settings: RuleSettings) -> dict:
    """One raw row (with its file's `format`, `mapping` and `category_field`) as a conversation (`kind`,
    `messages`, `chosen`, `rejected`) and its `category`, with the features that need no tokenizer and no
    other row, its `pii` counts (text redacted when settings say so) and conversion `warnings`."""
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
    # Calls and answers are judged in a well-formed conversation only, so a broken row is not blamed twice.
    well_formed = structure is None and not ex.missing
    tool_calls = tool_call_problem(messages, ex.tools) if well_formed else None
    answer = answer_features(messages, chosen, settings.answer_quality) if well_formed else {}
    # Every row's language is measured (the drop's mix); only a well-formed row can break the rule.
    language = language_features(messages, chosen, settings.language)
    return {
        **{k: raw[k] for k in ("row_id", "drop", "source_file", "source_line", "format")},
        "kind": kind,
        "messages": messages,
        "chosen": chosen,
        "rejected": rejected,
        "tools": ex.tools,
        "category": category_of(raw["record"], raw.get("category_field")),
        "missing_fields": ", ".join(ex.missing) or None,
        "structure_error": structure,
        "tool_call_error": tool_calls,
        "hygiene_error": hygiene_problem(texts),
        **{column: answer.get(column) for column in ANSWER_COLUMNS.values()},
        "language": language["language"],
        "language_error": language["language_error"] if well_formed else None,
        "pii": pii or None,
        "warnings": ", ".join(sorted(set(ex.warnings))) or None,
    }


def rows_with_features(raw: list[dict], tokenizer, settings: RuleSettings) -> list[dict]:
    """One row per raw row (with its file's `format`): the conversation and every feature column
    the suite checks but `duplicate_of`, plus `pii` counts and conversion `warnings`: what a worker
    process can compute for a batch on its own. `duplicate_of` needs every earlier row (earlier
    batches too): `mark_duplicates` sets it, batch after batch in landing order."""
    rows = [conversation_row(r, settings) for r in raw]
    measure(rows, tokenizer, settings)
    return rows


@dataclass(frozen=True)
class RuleValues:
    """The settings the rules read, as plain values (a worker process receives them): the
    validation config's, `max_tokens` resolved to a number (`validated_records.length_budget`)."""

    max_tokens: int
    truncate_over_long: bool
    system_prompt: str
    pii: str
    answer_quality: AnswerRules = AnswerRules()
    language: LanguageRule = LanguageRule()


# A worker process's tokenizer and settings, set once by `start_feature_worker`.
_WORKER: dict = {}


def start_feature_worker(tokenizer, settings: RuleValues) -> None:
    """Initializer of a worker process that runs `features_in_worker`."""
    _WORKER.update(tokenizer=tokenizer, settings=settings)


def features_in_worker(raw: list[dict]) -> list[dict]:
    return rows_with_features(raw, _WORKER["tokenizer"], _WORKER["settings"])


def row_conversations(row: dict) -> list[list[dict]]:
    """What a row's length is measured on: its conversation, or a preference prompt with each answer."""
    if row["kind"] == "preference":
        return [row["messages"] + [{"role": "assistant", "content": a or ""}] for a in (row["chosen"], row["rejected"])]
    return [row["messages"]]


def row_lengths(row: dict, tokenizer):
    """How `row`'s candidate conversations are measured when it is cut: `lengths(conversations)`,
    each rendered with the row's tools, a preference prompt by its longer answer."""
    tools = row.get("tools")
    if row["kind"] != "preference":
        return lambda conversations: render_lengths(tokenizer, conversations, tools=[tools] * len(conversations))
    answers = [{"role": "assistant", "content": a or ""} for a in (row["chosen"], row["rejected"])]

    def lengths(prompts: list[list[dict]]) -> list[int]:
        both = render_lengths(tokenizer, [p + [a] for p in prompts for a in answers], tools=[tools] * 2 * len(prompts))
        return [max(both[i], both[i + 1]) for i in range(0, len(both), 2)]

    return lengths


def template_refusal(error: Exception) -> str:
    """A chat template's refusal as a rejected row shows it: its message's first line."""
    message = str(error).strip().splitlines()
    return (message[0] if message else type(error).__name__)[:REFUSAL_CHARS]


def lengths_or_refusals(rows: list[dict], tokenizer) -> list[tuple[int | None, str | None]]:
    """(length, None) for each row (its longer answer for a preference pair), or (None, the
    template's message) for a row the base model's chat template refuses to render (some families'
    templates raise on a system turn, a tool turn or turns that do not alternate). The batch is
    rendered at once; only when it fails is it rendered row by row, to find the refusing rows."""
    conversations = [(c, r.get("tools")) for r in rows for c in row_conversations(r)]
    try:
        flat = render_lengths(tokenizer, [c for c, _ in conversations], tools=[t for _, t in conversations])
    except Exception:  # noqa: BLE001 - any error of the template's own: told apart row by row below
        found = []
        for r in rows:
            conversations = row_conversations(r)
            try:
                lengths = render_lengths(tokenizer, conversations, tools=[r.get("tools")] * len(conversations))
                found.append((max(lengths), None))
            except Exception as error:  # noqa: BLE001 - the template's message is the row's reason
                found.append((None, template_refusal(error)))
        return found
    found, i = [], 0
    for r in rows:
        k = 2 if r["kind"] == "preference" else 1
        found.append((max(flat[i : i + k]), None))
        i += k
    return found


def measure(rows: list[dict], tokenizer, settings: RuleSettings) -> None:
    """Set `n_tokens`, the token length of each formatted example (the longer answer for preference
    pairs), or `template_error` for a row the base model's chat template refuses; and, when settings
    say so (`truncate_over_long`), cut each over-long row to fit (`fit_to_budget`: `messages`
    replaced, `truncated` set and `truncation` saying what was cut). A row that cannot fit keeps its
    messages and, as `n_tokens`, the length of its shortest form: the max_tokens rule leaves it out."""
    for r in rows:
        r["n_tokens"], r["truncated"], r["truncation"], r["template_error"] = None, False, None, None
    measured = [r for r in rows if r["messages"]]
    for r, (n, refusal) in zip(measured, lengths_or_refusals(measured, tokenizer)):
        r["n_tokens"] = n
        # A row already broken by another rule is blamed once, for that rule.
        r["template_error"] = refusal if not (r.get("structure_error") or r.get("missing_fields")) else None
    if not settings.truncate_over_long:
        return
    for r in measured:
        if r["n_tokens"] is not None and r["n_tokens"] > settings.max_tokens:
            fit = fit_to_budget(r["messages"], row_lengths(r, tokenizer), tokenizer, settings.max_tokens)
            r["n_tokens"] = fit.n_tokens
            if fit.messages is not None:
                r["messages"], r["truncated"], r["truncation"] = fit.messages, True, fit.cut


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
