"""The per-row rules of validation as plain functions: a word tokenizer and an in-memory `seen`
stand in for the base model's tokenizer and the on-disk FirstSeen, so no Dagster, Great
Expectations or SQLite is involved."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from data_checks.answer_quality import AnswerRules
from data_checks.languages import LanguageRule
from data_checks.record_rules import (
    CUT_USER_TURN,
    DROPPED_TURNS,
    NORMALIZED_KEY,
    conversation_row,
    duplicate_note,
    exchanges,
    fit_to_budget,
    hygiene_problem,
    mark_duplicates,
    measure,
    render_lengths,
    rows_with_features,
    structure_problem,
    tool_call_problem,
)

GOOD = {"instruction": "Triage the ticket.", "input": "My RouterX is down.", "output": "RouterX"}


def m(role, content):
    return {"role": role, "content": content}


def settings(**overrides):
    return SimpleNamespace(
        **{
            "max_tokens": 64,
            "truncate_over_long": True,
            "system_prompt": "Be precise.",
            "pii": "warn",
            "answer_quality": AnswerRules(),
            "language": LanguageRule(),
            **overrides,
        }
    )


def raw(records, fmt="alpaca", file="d/t.jsonl"):
    return [
        {"row_id": i, "drop": "d", "source_file": file, "source_line": i + 1, "format": fmt, "record": r}
        for i, r in enumerate(records)
    ]


class WordTokenizer:
    """One token per whitespace-separated word; the chat template adds one role token per turn."""

    chat_template = "words"

    def __init__(self):
        self.words: list[str] = []
        self.ids: dict[str, int] = {}

    def _id(self, word: str) -> int:
        if word not in self.ids:
            self.ids[word] = len(self.words)
            self.words.append(word)
        return self.ids[word]

    def apply_chat_template(self, messages, tokenize=False, **kwargs):
        return " ".join(f"<{t['role']}> {t['content']}" for t in messages)

    def __call__(self, texts, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": [self._id(w) for w in texts.split()]}
        return {"input_ids": [[self._id(w) for w in t.split()] for t in texts]}

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


class RefusingTokenizer(WordTokenizer):
    """A word tokenizer whose chat template refuses tool turns, as some families' templates do."""

    chat_template = "words, no tools"

    def apply_chat_template(self, messages, tokenize=False, **kwargs):
        if any(t["role"] == "tool" for t in messages):
            raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...\n(more detail)")
        return super().apply_chat_template(messages, tokenize, **kwargs)


class MemorySeen:
    """FirstSeen's contract (first place of each text, earlier calls included) in a dict."""

    def __init__(self):
        self.first: dict[str, str] = {}
        self.calls: list[list[str]] = []

    def check(self, texts, places):
        self.calls.append(list(texts))
        found = []
        for text, place in zip(texts, places):
            found.append(self.first.get(text))
            self.first.setdefault(text, place)
        return found


# ---- structure and hygiene ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "kind", "problem"),
    [
        ([m("system", "s"), m("user", "q"), m("assistant", "a")], "sft", None),
        ([m("user", "q"), m("assistant", "a"), m("user", "q2"), m("assistant", "a2")], "sft", None),
        ([m("system", "s")], "sft", "no user or assistant turns"),
        ([], "sft", "no user or assistant turns"),
        (
            [m("user", "q"), m("system", "s"), m("assistant", "a")],
            "sft",
            "turn 2 is a system message; only the first message may be one",
        ),
        (
            [m("assistant", "a"), m("user", "q")],
            "sft",
            "turn 1 is from the assistant, expected the user (turns must alternate)",
        ),
        (
            [m("user", "q"), m("assistant", "a"), m("user", "q2")],
            "sft",
            "last turn is from the user; a training example ends with the assistant's answer",
        ),
        ([m("user", "q"), m("assistant", "")], "sft", "turn 2 (assistant) is empty"),
        ([m("user", "")], "preference", "turn 1 (user) is empty"),
        ([m("user", "p")], "preference", None),
        ([m("user", "p"), m("assistant", "a")], "preference", "a preference prompt must end with a user turn"),
    ],
)
def test_structure_problem_names_the_first_broken_rule(messages, kind, problem):
    assert structure_problem(messages, kind) == problem


def test_hygiene_problem_flags_mis_decoded_text_and_control_characters():
    assert hygiene_problem(["fine", "tabs\tand\nnew lines\r\n are fine"]) is None
    assert hygiene_problem(["ok", "bell \x07"]) == "control character U+0007"
    assert hygiene_problem(["del \x7f"]) == "control character U+007F"
    assert hygiene_problem(["caf\ufffd", "\x07"]).startswith("U+FFFD replacement character")


# ---- conversion ----------------------------------------------------------------------------------


def test_a_row_becomes_a_conversation_with_the_system_prompt_and_its_source():
    row = conversation_row(raw([GOOD])[0], settings())
    assert row["messages"] == [
        m("system", "Be precise."),
        m("user", "Triage the ticket.\n\nMy RouterX is down."),
        m("assistant", "RouterX"),
    ]
    assert (row["row_id"], row["source_file"], row["source_line"], row["kind"]) == (0, "d/t.jsonl", 1, "sft")
    assert row["missing_fields"] is row["structure_error"] is row["hygiene_error"] is row["pii"] is None


def test_a_row_missing_a_field_is_not_also_blamed_for_its_structure():
    row = conversation_row(raw([{**GOOD, "output": "  "}])[0], settings())
    assert row["missing_fields"] == "output"
    assert row["structure_error"] is None


def test_conversion_problems_come_before_structure_rules():
    record = {"messages": [m("user", "Hi"), m("function", "42"), m("user", "again")]}
    row = conversation_row(raw([record], fmt="openai_chat")[0], settings())
    assert row["structure_error"] == "messages[2] has unknown role 'function'"


def test_personal_data_is_counted_and_redacted_only_when_asked():
    record = raw([{**GOOD, "input": "Mail dana@example.com, dana@example.org or call +1 415-555-0132."}])[0]
    warned = conversation_row(record, settings())
    assert warned["pii"] == {"email": 2, "phone": 1}
    assert "dana@example.com" in warned["messages"][1]["content"]
    redacted = conversation_row(record, settings(pii="redact"))
    assert redacted["pii"] == {"email": 2, "phone": 1}
    assert redacted["messages"][1]["content"].endswith("Mail [EMAIL], [EMAIL] or call [PHONE].")


def test_preference_rows_keep_their_answers_apart():
    row = conversation_row(raw([{"prompt": "Pick.", "chosen": "A", "rejected": "B"}], fmt="preference")[0], settings())
    assert row["kind"] == "preference"
    assert row["messages"] == [m("system", "Be precise."), m("user", "Pick.")]
    assert (row["chosen"], row["rejected"]) == ("A", "B")
    assert row["structure_error"] is None


# ---- measuring and truncation -------------------------------------------------------------------


def test_token_length_is_of_the_rendered_chat_in_any_chunk_size():
    tokenizer = WordTokenizer()
    chats = [[m("user", "one two three"), m("assistant", "four")], [m("user", "x")]]
    assert render_lengths(tokenizer, chats) == [6, 2]
    assert render_lengths(tokenizer, chats, chunk=1) == [6, 2]


def test_preference_pairs_are_measured_by_their_longer_answer():
    rows = [
        conversation_row(r, settings())
        for r in raw([{"prompt": "p", "chosen": "a", "rejected": "b c d e"}], "preference")
    ]
    measure(rows, WordTokenizer(), settings())
    # system: 3 tokens (role + 2 words), user: 2, longer answer: 5
    assert rows[0]["n_tokens"] == 10 and rows[0]["truncated"] is False


def test_rows_without_messages_are_not_measured():
    row = {"messages": [], "kind": "sft", "chosen": None, "rejected": None}
    measure([row], WordTokenizer(), settings())
    assert row["n_tokens"] is None and row["truncated"] is False


def words(n: int, word: str = "w") -> str:
    return " ".join(f"{word}{i}" for i in range(n))


def measured(records, fmt="alpaca", tokenizer=None, **overrides):
    rows = [conversation_row(r, settings()) for r in raw(records, fmt)]
    measure(rows, tokenizer or WordTokenizer(), settings(**overrides))
    return rows


def test_an_over_long_row_is_cut_in_its_last_user_turn_by_default_and_kept_whole_when_asked():
    long_input = words(100)
    tokenizer = WordTokenizer()
    (kept,) = measured([{**GOOD, "input": long_input}], max_tokens=40, truncate_over_long=False)
    assert kept["n_tokens"] > 40 and kept["truncated"] is False and kept["truncation"] is None

    (cut,) = measured([{**GOOD, "input": long_input}], tokenizer=tokenizer, max_tokens=40)
    assert cut["truncated"] is True and cut["truncation"] == CUT_USER_TURN
    assert cut["n_tokens"] == render_lengths(tokenizer, [cut["messages"]])[0] <= 40
    assert cut["n_tokens"] >= 40 - 4, "cut no more than a retry step beyond what fits"
    assert cut["messages"][-1] == m("assistant", "RouterX"), "the answer is never cut"
    assert cut["messages"][0] == m("system", "Be precise."), "nor the system turn"
    assert cut["messages"][1]["content"].startswith("Triage the ticket."), "the text is cut from its end"


def test_the_earliest_exchanges_go_first_and_no_more_of_them_than_needed():
    turns = [m("system", "s")]
    for i in range(4):
        turns += [m("user", words(10, f"q{i}-")), m("assistant", words(10, f"a{i}-"))]
    (row,) = measured([{"messages": turns}], "openai_chat", max_tokens=50)
    # 2 + 4 exchanges of 22 tokens: 90; dropping two leaves 46
    assert row["truncation"] == DROPPED_TURNS and row["n_tokens"] == 46
    assert row["messages"] == [turns[0], *turns[5:]], "whole exchanges dropped, the latest kept, alternation intact"


def test_when_dropping_every_earlier_exchange_is_not_enough_the_last_user_turn_is_cut_too():
    turns = [m("user", words(30, "q")), m("assistant", "a"), m("user", words(60, "p")), m("assistant", words(5))]
    (row,) = measured([{"messages": turns}], "openai_chat", max_tokens=30)
    assert row["truncation"] == f"{DROPPED_TURNS}, {CUT_USER_TURN}" and row["n_tokens"] <= 30
    system, user, answer = row["messages"]
    assert system == m("system", "Be precise.") and answer == turns[-1]
    assert user["role"] == "user" and user["content"].startswith("p0 p1") and len(user["content"].split()) < 60


def test_a_row_whose_answer_alone_does_not_fit_is_left_whole_with_the_length_of_its_shortest_form():
    (row,) = measured([{**GOOD, "input": words(50), "output": words(80, "a")}], max_tokens=60)
    assert row["truncated"] is False and row["truncation"] is None
    assert row["messages"][1]["content"].endswith("w49"), "left whole: rejected_records keeps the raw row anyway"
    # system 3, an empty user turn 1, assistant role + 80 words: the shortest form is 85 tokens
    assert row["n_tokens"] == 85 > 60


def test_a_preference_prompt_is_cut_and_both_answers_kept():
    record = {"prompt": words(80), "chosen": "short", "rejected": words(6, "r")}
    (row,) = measured([record], "preference", max_tokens=20)
    assert row["truncated"] is True and row["truncation"] == CUT_USER_TURN
    assert (row["chosen"], row["rejected"]) == ("short", words(6, "r"))
    # measured by the longer answer: system 3, user 1 + kept words, assistant 1 + 6
    assert row["n_tokens"] == 11 + len(row["messages"][1]["content"].split()) <= 20


def test_fit_gives_up_on_a_conversation_without_a_user_turn():
    tokenizer = WordTokenizer()
    fit = fit_to_budget(
        [m("system", "s"), m("assistant", "a b c")], lambda cs: render_lengths(tokenizer, cs), tokenizer, 2
    )
    assert fit.messages is None and fit.n_tokens == 6


def test_exchanges_start_at_each_user_turn_and_keep_tool_calls_with_their_replies():
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}
    turns = [m("user", "1"), call, m("tool", "r"), m("assistant", "2"), m("user", "3"), m("assistant", "4")]
    assert exchanges(turns) == [turns[:4], turns[4:]]


class CountingTokenizer(WordTokenizer):
    def __init__(self):
        super().__init__()
        self.renders = 0

    def apply_chat_template(self, messages, tokenize=False, **kwargs):
        self.renders += 1
        return super().apply_chat_template(messages, tokenize, **kwargs)


def test_only_over_long_rows_pay_for_the_cut():
    tokenizer = CountingTokenizer()
    records = [{**GOOD, "input": f"ticket {i}"} for i in range(200)] + [{**GOOD, "input": words(100)}]
    rows = measured(records, tokenizer=tokenizer, max_tokens=40)
    assert [r["truncated"] for r in rows].count(True) == 1
    assert tokenizer.renders <= 201 + 4, "one render per row, then a few for the one over-long row"


def chat(*turns):
    return {"messages": [m(role, content) for role, content in turns]}


def test_rows_the_chat_template_refuses_are_marked_one_by_one_and_the_rest_measured():
    records = [
        chat(("user", "Hi"), ("assistant", "Hello.")),
        tool_record(),
        chat(("user", "Yo"), ("assistant", "Hey.")),
    ]
    good, refused, other = measured(records, "openai_chat", tokenizer=RefusingTokenizer())
    assert refused["template_error"] == "Conversation roles must alternate user/assistant/user/assistant/..."
    assert refused["n_tokens"] is None
    assert good["template_error"] is other["template_error"] is None
    assert (good["n_tokens"], other["n_tokens"]) == (7, 7)


def test_a_row_broken_otherwise_is_not_also_blamed_on_the_template():
    record = tool_record()
    record["messages"] = [*record["messages"], m("user", "dangling")]
    (row,) = measured([record], "openai_chat", tokenizer=RefusingTokenizer())
    assert row["structure_error"] and row["template_error"] is None


# ---- duplicates ---------------------------------------------------------------------------------


def test_duplicate_note_prefers_the_exact_match():
    assert duplicate_note("f:1", "f:2") == "exact duplicate of f:1"
    assert duplicate_note(None, "f:2") == "same as f:2 up to case and whitespace"
    assert duplicate_note(None, None) is None


def test_duplicates_name_the_first_row_across_batches():
    seen = MemorySeen()
    first = [conversation_row(r, settings()) for r in raw([GOOD, {**GOOD, "input": "Other."}])]
    mark_duplicates(first, seen)
    later = raw([{**GOOD, "input": "  OTHER. "}, GOOD, {**GOOD, "input": "New."}], file="d/u.jsonl")
    second = [conversation_row(r, settings()) for r in later]
    mark_duplicates(second, seen)
    assert [r["duplicate_of"] for r in first] == [None, None]
    assert [r["duplicate_of"] for r in second] == [
        "same as d/t.jsonl:2 up to case and whitespace",
        "exact duplicate of d/t.jsonl:1",
        None,
    ]


def test_a_normalized_key_is_never_taken_for_an_exact_one():
    """Exact and normalized texts share one table: a later row whose exact text happens to equal an
    earlier row's normalized text is a repeat up to case and whitespace, not an exact duplicate."""
    seen = MemorySeen()
    first = [
        conversation_row(r, settings())
        for r in raw([{"messages": [m("user", "Hi"), m("assistant", "Yo")]}], "openai_chat")
    ]
    mark_duplicates(first, seen)
    # rendered as one user turn, its exact text is the first row's normalized text
    later = raw([{"messages": [m("user", "hi assistant: yo")]}], "openai_chat", file="d/u.jsonl")
    second = [conversation_row(r, settings()) for r in later]
    mark_duplicates(second, seen)
    assert second[0]["duplicate_of"] == "same as d/t.jsonl:1 up to case and whitespace"
    assert all(t.startswith(NORMALIZED_KEY) for t in seen.calls[1])


def test_features_and_duplicates_set_every_feature_the_suite_reads():
    rows = rows_with_features(raw([GOOD, GOOD]), WordTokenizer(), settings())
    assert "duplicate_of" not in rows[0], "a worker cannot know the rows of other batches"
    mark_duplicates(rows, MemorySeen())
    for column in ("missing_fields", "structure_error", "hygiene_error", "n_tokens", "duplicate_of", "truncated"):
        assert column in rows[0]
    assert rows[0]["n_tokens"] > 0
    assert [r["duplicate_of"] for r in rows] == [None, "exact duplicate of d/t.jsonl:1"]


def test_the_rules_load_without_dagster_great_expectations_or_sqlite():
    code = "import sys, data_checks.record_rules; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("dagster", "great_expectations", "sqlite3", "pyarrow", "resources"):
        assert f"'{heavy}'" not in loaded


@pytest.mark.parametrize(
    ("chosen", "rejected", "problem"),
    [
        ("4", "5", None),
        ("Four.", " four. ", "chosen and rejected answers are the same (up to case and whitespace): nothing to prefer"),
    ],
)
def test_a_preference_pair_needs_two_different_answers(chosen, rejected, problem):
    (row,) = [
        conversation_row(r, settings())
        for r in raw([{"prompt": "2+2?", "chosen": chosen, "rejected": rejected}], "preference")
    ]
    assert row["structure_error"] == problem


def test_hosted_preference_rows_are_preference_pairs():
    record = {"input": {"messages": [m("user", "2+2?")]}, "preferred_output": [m("assistant", "4")],
              "non_preferred_output": [m("assistant", "4")]}  # fmt: skip
    (row,) = [conversation_row(r, settings()) for r in raw([record], "hosted_preference")]
    assert row["kind"] == "preference" and (row["chosen"], row["rejected"]) == ("4", "4")
    assert row["structure_error"].startswith("chosen and rejected answers are the same")


# ---- tool calling and turn weights --------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def calls(*pairs):
    """An assistant turn calling (name, arguments JSON) pairs, ids c1, c2, ..."""
    made = [
        {"id": f"c{k}", "type": "function", "function": {"name": n, "arguments": a}}
        for k, (n, a) in enumerate(pairs, start=1)
    ]
    return {"role": "assistant", "content": "", "tool_calls": made}


def tool(content, id_="c1"):
    return {"role": "tool", "content": content, "tool_call_id": id_}


CITY = '{"city": "Oslo"}'


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([m("user", "q"), calls(("get_weather", CITY)), tool("rain"), m("assistant", "Rain.")], None),
        ([m("user", "q"), calls(("get_weather", CITY))], None),  # the call itself is the answer
        (
            [
                m("user", "q"),
                calls(("get_weather", CITY), ("get_weather", CITY)),
                tool("a"),
                tool("b", "c2"),
                m("assistant", "Done."),
                m("user", "More?"),
                m("assistant", "No."),
            ],
            None,
        ),  # fmt: skip
        ([m("user", "q"), tool("rain")], "turn 2 is a tool reply, but the turn before it made no tool call"),
        (
            [m("user", "q"), m("assistant", "a"), tool("rain")],
            "turn 3 is a tool reply, but the turn before it made no tool call",
        ),
        (
            [m("user", "q"), calls(("get_weather", CITY)), m("assistant", "Rain.")],
            "turn 3 is from the assistant, expected a tool reply to the tool calls of turn 2",
        ),
        (
            [m("user", "q"), calls(("get_weather", CITY)), tool("rain"), m("user", "And?")],
            "turn 4 is from the user, expected the assistant after the tool replies",
        ),
        (
            [m("user", "q"), calls(("get_weather", CITY)), tool("rain")],
            "last turn is from the tool; a training example ends with the assistant's answer",
        ),
        ([m("user", "q"), {"role": "assistant", "content": "", "tool_calls": []}], "turn 2 (assistant) is empty"),
        (
            [m("user", "q"), {**m("assistant", "a"), "weight": 0}],
            "every assistant turn has weight 0; nothing to train on",
        ),
        ([m("user", "q"), {**m("assistant", "a"), "weight": 0}, m("user", "q2"), m("assistant", "b")], None),
    ],
)
def test_tool_turns_follow_the_calls_they_answer(messages, problem):
    assert structure_problem(messages, "sft") == problem


@pytest.mark.parametrize(
    ("messages", "tools", "problem"),
    [
        ([m("user", "q"), calls(("get_weather", CITY)), tool("rain"), m("assistant", "Rain.")], [WEATHER], None),
        ([m("user", "q"), calls(("get_forecast", CITY))], None, None),  # no tools listed: any name
        (
            [m("user", "q"), calls(("get_forecast", CITY))],
            [WEATHER],
            "turn 2 calls 'get_forecast', which is not among the row's tools (get_weather)",
        ),
        (
            [m("system", "s"), m("user", "q"), calls(("get_weather", '{"city": "Oslo"'))],
            [WEATHER],
            "turn 2 calls 'get_weather' with arguments that are not valid JSON "
            "(Expecting ',' delimiter at column 16): '{\"city\": \"Oslo\"'",
        ),
        (
            [m("user", "q"), calls(("get_weather", '["Oslo"]'))],
            [WEATHER],
            "turn 2 calls 'get_weather' with arguments that are not a JSON object: '[\"Oslo\"]'",
        ),
        (
            [m("user", "q"), calls(("get_weather", CITY)), tool("rain", "c9"), m("assistant", "Rain.")],
            [WEATHER],
            "turn 3 answers tool call 'c9', which no earlier assistant turn made",
        ),
        (
            [m("user", "q"), calls(("get_weather", CITY)), m("tool", "rain"), m("assistant", "Rain.")],
            [WEATHER],
            "turn 3 is a tool reply without a tool_call_id naming the call it answers",
        ),
    ],
)
def test_tool_calls_name_a_listed_tool_parse_and_are_answered_by_id(messages, tools, problem):
    assert tool_call_problem(messages, tools) == problem


def tool_record(arguments=CITY, email=""):
    return {
        "messages": [
            m("user", f"Weather in Oslo?{email}"),
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            {"role": "assistant", "content": "Rain.", "weight": 1},
        ],
        "tools": [WEATHER],
    }  # fmt: skip


def test_a_tool_calling_row_keeps_its_tools_calls_and_weights():
    row = conversation_row(raw([tool_record()], fmt="openai_chat")[0], settings())
    assert row["tools"] == [WEATHER]
    assert row["messages"][0] == m("system", "Be precise.")
    assert row["messages"][2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": CITY}
    assert row["messages"][3] == tool("rain")
    assert row["messages"][4] == {"role": "assistant", "content": "Rain.", "weight": 1}
    assert row["structure_error"] is row["tool_call_error"] is row["warnings"] is None


def test_a_call_with_unparsable_arguments_is_a_tool_call_error():
    row = conversation_row(raw([tool_record(arguments="{city: Oslo}")], fmt="openai_chat")[0], settings())
    assert row["structure_error"] is None
    assert row["tool_call_error"].startswith("turn 2 calls 'get_weather' with arguments that are not valid JSON")


def test_personal_data_in_call_arguments_is_counted_and_redacted():
    record = tool_record(arguments='{"city": "Oslo", "notify": "dana@example.com"}')
    row = conversation_row(raw([record], fmt="openai_chat")[0], settings(pii="redact"))
    assert row["pii"] == {"email": 1}
    assert row["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo", "notify": "[EMAIL]"}'
    assert row["tool_call_error"] is None


def test_a_tool_calling_row_is_measured_with_its_tools_rendered():
    rows = [conversation_row(r, settings()) for r in raw([tool_record()], fmt="openai_chat")]
    plain = [conversation_row(r, settings()) for r in raw([{"messages": tool_record()["messages"]}], "openai_chat")]
    measure(rows + plain, WordTokenizer(), settings(max_tokens=1000))
    assert rows[0]["n_tokens"] > plain[0]["n_tokens"], "the tool schemas count toward the length"
    rendered = (
        "<system> Be precise. <user> Weather in Oslo? <assistant> "
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call> <tool> rain <assistant> Rain.'
    )
    assert plain[0]["n_tokens"] == len(rendered.split())
