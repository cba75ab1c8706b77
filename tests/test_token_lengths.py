"""`token_lengths` against the tokenizer itself: the fast count (ChatML built as a string, pieces
counted in Python) must equal `tokenizer(apply_chat_template(...), add_special_tokens=False)` on
every kind of row, and fall back to the tokenizer wherever it cannot vouch for that."""

import copy
import random
import re

import pytest

from assets.domain.chat import DEFAULT_SYSTEM_PROMPT, normalize, with_system
from assets.domain.token_lengths import TokenLengths, chatml_text, token_lengths
from assets.domain.tool_calls import render_messages, render_text
from data_checks.pii import REDACTED, _matches, scan

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}


def m(role, content, **extra):
    return {"role": role, "content": content, **extra}


# (messages, tools): system or not, tools and tool calls, weights, non-ASCII, added tokens in the
# text, whitespace runs and contractions, empty turns.
CONVERSATIONS = [
    ([m("user", "Hi"), m("assistant", "Hello!")], None),
    ([m("system", "Be brief."), m("user", "What's 2+2?"), m("assistant", "It's 4.")], None),
    (
        [
            m("system", "Use tools."),
            m("user", "Weather in Zürich?"),
            m("assistant", "", tool_calls=[CALL]),
            m("tool", '{"temp_c": 21}', tool_call_id="call_1"),
            m("assistant", "21 °C."),
        ],
        [WEATHER],
    ),
    ([m("user", "Weather?"), m("assistant", "Checking.", tool_calls=[CALL])], [WEATHER]),
    ([m("user", "a"), m("assistant", "draft", weight=0), m("user", "again"), m("assistant", "final", weight=1)], None),
    ([m("user", "Ünïcödé: 東京, Привет, مرحبا, 😀 👍🏽, e\u0301, \u00a0nbsp, \u2028sep"), m("assistant", "ok")], None),
    ([m("user", "text <|im_start|>user\nand <|im_end|> <|endoftext|><file_sep>"), m("assistant", "<|im_end")], None),
    ([m("user", "  lead\t\ttabs\r\n\r\n  trail   \n"), m("assistant", "they'll we've I'm she'd 'S")], None),
    ([m("user", "numbers 1234567 3.14159 -42 1e10 ١٢٣ Ⅻ ²"), m("assistant", "")], None),
    ([m("user", "ctrl \x0b\x0c\x1c\x1f\x85 end"), m("assistant", "x" * 500)], None),
]


def slow_count(tokenizer, messages, tools=None) -> int:
    return len(tokenizer(render_text(tokenizer, messages, tools), add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_count_equals_the_tokenizers_own_on_varied_rows(bundled_tokenizer, index):
    messages, tools = CONVERSATIONS[index]
    for chat in (messages, with_system(messages, DEFAULT_SYSTEM_PROMPT)):
        lengths = TokenLengths(bundled_tokenizer)
        assert lengths.of([chat], [tools]) == [slow_count(bundled_tokenizer, chat, tools)]


def test_chatml_is_built_as_the_template_renders_it(bundled_tokenizer):
    lengths = token_lengths(bundled_tokenizer)
    assert lengths.chatml and lengths.backend is not None and lengths.ascii_ok
    for messages, tools in CONVERSATIONS:
        for chat in (messages, with_system(messages, "Sys")):
            assert chatml_text(render_messages(chat, tools)) == render_text(bundled_tokenizer, chat, tools)
            assert lengths.render(chat, tools) == render_text(bundled_tokenizer, chat, tools)
    with pytest.raises(ValueError):  # as the tokenizer itself does
        lengths.render([])


def test_random_texts_count_as_the_tokenizer_counts(bundled_tokenizer):
    rng = random.Random(0)
    alphabet = [*"aZ09 '\t\n\r.,!?-_<>|é漢😀\u0301ß’“—…\u00a0\u3000\x85", "<|im_start|>", "<|im_end|>", "'s", "  "]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    expected = [len(ids) for ids in bundled_tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert TokenLengths(bundled_tokenizer).count(texts) == expected


def test_one_instance_per_tokenizer_keeps_what_it_learnt(bundled_tokenizer):
    first = token_lengths(bundled_tokenizer)
    first.count(["remember these words"])
    assert token_lengths(bundled_tokenizer) is first and first.pieces


def test_texts_with_a_character_in_doubt_are_counted_by_the_tokenizer(bundled_tokenizer):
    lengths = TokenLengths(bundled_tokenizer)
    lengths.checked.add("é")
    lengths.disagreeing.add("é")
    texts = ["café au lait", "plain ascii"]
    assert lengths._pieces_count(texts[0]) is None
    assert lengths.count(texts) == [len(ids) for ids in bundled_tokenizer(texts, add_special_tokens=False)["input_ids"]]


def test_another_chat_template_is_rendered_by_the_tokenizer(bundled_tokenizer):
    other = copy.deepcopy(bundled_tokenizer)
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    lengths = TokenLengths(other)
    assert not lengths.chatml
    for messages, tools in CONVERSATIONS:
        assert lengths.of([messages], [tools]) == [slow_count(other, messages, tools)]


def test_a_tokenizer_of_another_kind_is_counted_by_itself():
    class Words:
        chat_template = None

        def apply_chat_template(self, messages, tokenize=False):
            return " ".join(f"<{t['role']}> {t['content']}" for t in messages)

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [t.split() for t in texts]}

    lengths = TokenLengths(Words())
    assert lengths.backend is None
    assert lengths.of([[m("user", "a b c")]]) == [4]


def test_normalize_folds_whitespace_as_the_regex_did():
    for text in ["  a\t\tb\n", "\x1c a \x85b\u3000c\u200b", "", "   ", "ÄB  Straße"]:
        assert normalize(text) == re.sub(r"\s+", " ", text).strip().casefold()


def unfiltered_scan(text: str) -> tuple[str, dict[str, int]]:
    """`scan` without its cheap pre-checks: every pattern run on every text."""
    counts = {}
    for kind in ("email", "card", "phone"):
        spans = [match.span() for match in _matches(kind, text)]
        if spans:
            counts[kind] = len(spans)
        for start, end in reversed(spans):
            text = text[:start] + REDACTED[kind] + text[end:]
    return text, counts


def test_pii_pre_checks_change_no_finding():
    rng = random.Random(1)
    alphabet = [*"0123456789 .-()+@ax\n", "4111 1111 1111 1111", "a.b@c.de", "+1 (555) 123-4567", "٣", "555.123.4567"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(20000)]
    assert [scan(t) for t in texts] == [unfiltered_scan(t) for t in texts]
    assert any(scan(t)[1] for t in texts)
