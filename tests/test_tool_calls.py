"""Tool calling as text: the fallback rendering, its inverse `parse_reply`, and the choice between a
chat template's own tool support and the fallback. The module ships with the served model, so it
must stay importable alone."""

import ast
import json
import sys
from pathlib import Path

import pytest

from assets.domain import tool_calls
from assets.domain.tool_calls import (
    parse_reply,
    render_messages,
    render_text,
    reply_text,
    supports_tools,
    template_inputs,
)

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def call(id_, name, arguments):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo and Paris?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "weight": 0,
        "tool_calls": [call("a", "get_weather", '{"city": "Oslo"}'), call("b", "get_weather", '{"city": "Paris"}')],
    },
    {"role": "tool", "content": "rain", "tool_call_id": "a"},
    {"role": "tool", "content": "sun", "tool_call_id": "b"},
    {"role": "assistant", "content": "Rain in Oslo, sun in Paris."},
]
# A minimal template with tool support of its own (it reads `tools`), as Hugging Face templates do.
TOOLS_TEMPLATE = (
    "{%- if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{%- for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{%- if m.tool_calls is defined %}{% for c in m.tool_calls %}"
    "<call {{ c.function.name }} {{ c.function.arguments | tojson }}>{% endfor %}{% endif %}\n{% endfor %}"
)


def test_the_fallback_puts_tools_in_the_system_turn_and_calls_in_marked_blocks():
    rendered = render_messages(CONVERSATION, [WEATHER])
    assert rendered[0] == {
        "role": "system",
        "content": "Be brief.\n\nYou can call these tools:\n<tools>\n"
        + json.dumps(WEATHER)
        + "\n</tools>\nTo call a tool, answer with "
        '<tool_call>{"name": <tool name>, "arguments": <arguments as a JSON object>}</tool_call>, one block per call.',
    }
    assert rendered[2] == {
        "role": "assistant",
        "content": 'Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        "weight": 0,
    }
    assert rendered[3:] == [
        {"role": "tool", "content": "rain"},
        {"role": "tool", "content": "sun"},
        {"role": "assistant", "content": "Rain in Oslo, sun in Paris."},
    ]
    assert all(set(m) <= {"role", "content", "weight"} for m in rendered)


def test_without_a_system_turn_the_tools_get_one_and_plain_chats_are_left_as_they_are():
    rendered = render_messages(CONVERSATION[1:], [WEATHER])
    assert rendered[0]["role"] == "system" and rendered[0]["content"].startswith("You can call these tools:")
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert render_messages(plain) == plain and render_messages(plain, []) == plain


def test_parse_reply_inverts_the_rendering_of_each_assistant_turn():
    for turn in CONVERSATION:
        if turn["role"] != "assistant":
            continue
        (rendered,) = [m for m in render_messages([turn]) if m["role"] == "assistant"]
        content, calls = parse_reply(rendered["content"])
        assert content == turn["content"]
        expected = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in turn.get("tool_calls", [])]
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == expected
        assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
        assert rendered["content"] == reply_text(turn), "what a model should generate for the turn"
    ids = [c["id"] for c in parse_reply(render_messages([CONVERSATION[2]])[0]["content"])[1]]
    assert len(set(ids)) == 2, "each call gets its own id"


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Just text.", "Just text.", []),
        ('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', "", [("f", {"x": 1})]),
        ('<tool_call>\n{"name": "f", "parameters": {"x": 1}}\n</tool_call>', "", [("f", {"x": 1})]),
        ('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', "", [("f", {"x": 1})]),
        ('Sure. <tool_call>{"name": "f", "arguments": {}}', "Sure.", [("f", {})]),  # cut off by max_new_tokens
        ("<tool_call>not json</tool_call> ok", "<tool_call>not json</tool_call> ok", []),
        ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ],
)
def test_parse_reply_reads_the_blocks_it_can_and_keeps_the_rest_as_content(text, content, calls):
    got_content, got_calls = parse_reply(text)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] == calls


def test_a_template_that_reads_tools_gets_them_its_own_way(bundled_tokenizer):
    assert not supports_tools(bundled_tokenizer.chat_template), "SmolLM2's template knows no tools"
    assert supports_tools(TOOLS_TEMPLATE)
    messages, tools = template_inputs(CONVERSATION, [WEATHER], TOOLS_TEMPLATE)
    assert tools == [WEATHER]
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert "weight" not in messages[2] and CONVERSATION[2]["weight"] == 0, "the input is not changed"
    text = render_text(bundled_tokenizer, CONVERSATION, [WEATHER], chat_template=TOOLS_TEMPLATE)
    assert text.startswith("TOOLS:get_weather;[system]Be brief.[user]")
    assert '[assistant]Checking.<call get_weather {"city": "Oslo"}><call get_weather {"city": "Paris"}>' in text
    assert template_inputs(CONVERSATION, [WEATHER], bundled_tokenizer.chat_template)[1] is None


def test_plain_chats_render_exactly_as_the_base_template_renders_them(bundled_tokenizer):
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert render_text(bundled_tokenizer, plain) == bundled_tokenizer.apply_chat_template(plain, tokenize=False)
    prompt = render_text(bundled_tokenizer, plain[:1], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_the_module_imports_only_the_standard_library():
    """The served model ships this file alone (code_paths): it may import nothing else."""
    tree = ast.parse(Path(tool_calls.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported and imported <= set(sys.stdlib_module_names)
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
