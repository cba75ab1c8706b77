"""Tool calling as text: how a conversation with tools, tool calls and tool replies is rendered for a
chat template, and how a generated reply is read back into tool calls.

Standalone on purpose: it imports nothing from this project (only the standard library), because
the served model ships it beside its own code (`mlflow.pyfunc.log_model(code_paths=[...])`) and must
render a request exactly as training rendered the examples. Validation, training, evaluation and
serving all render through `chat_inputs`, so an example has one form wherever it becomes tokens. A
template with no system turn (Mistral's, Phi-3's first) gets the system text folded into the first
user turn, as templates that fold it themselves (Gemma's) do.

Messages are in the OpenAI chat shape: an assistant turn may carry `tool_calls`
(`[{"id", "type": "function", "function": {"name", "arguments": JSON text}}]`) and empty content,
a `tool` turn answers one call by its `tool_call_id`, and `tools` lists the functions a row may call
(`[{"type": "function", "function": {"name", "description", "parameters"}}]`).

A base tokenizer whose chat template supports tools (its template mentions `tools`) gets them its own
way: the messages with each call's arguments as an object, and `tools=` passed to
`apply_chat_template`, as TRL's SFTTrainer does. Any other template gets the fallback rendering,
plain role/content messages:

- the system turn ends with the tool schemas, one JSON object per line between `<tools>` and
  `</tools>`, and how to call one;
- each call is one line `<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>`
  after the assistant's text (if any);
- a tool reply is a `tool` turn holding the reply's content.

`parse_reply` is the inverse for generated text: the `<tool_call>` blocks become tool calls, the rest
is the reply's content.
"""

import json
import re
import uuid

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_INTRO = "You can call these tools:"
TOOLS_USAGE = (
    f'To call a tool, answer with {TOOL_CALL_OPEN}{{"name": <tool name>, "arguments": <arguments as a JSON object>}}'
    f"{TOOL_CALL_CLOSE}, one block per call."
)
# A block may be cut off by the generation budget: then it runs to the end of the text.
_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.S)


def supports_tools(chat_template: str | None) -> bool:
    """Whether a chat template renders tools itself (it reads a `tools` variable)."""
    return bool(chat_template) and re.search(r"\btools\b", chat_template) is not None


def parsed_arguments(arguments):
    """A call's arguments as a value: JSON text decoded, anything unreadable left as it is."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def call_block(call: dict) -> str:
    """One tool call as the fallback rendering writes it."""
    function = call.get("function") or {}
    payload = {"name": function.get("name"), "arguments": parsed_arguments(function.get("arguments"))}
    return TOOL_CALL_OPEN + json.dumps(payload, ensure_ascii=False) + TOOL_CALL_CLOSE


def tools_text(tools: list[dict]) -> str:
    """The fallback rendering's description of the tools, appended to the system turn."""
    schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return f"{TOOLS_INTRO}\n<tools>\n{schemas}\n</tools>\n{TOOLS_USAGE}"


def reply_text(message: dict) -> str:
    """A turn's content as the fallback renders it: for an assistant turn with calls, its text (if
    any), then one `<tool_call>` line per call; what a model should generate, and `parse_reply` reads."""
    text = message.get("content") or ""
    blocks = [call_block(c) for c in message.get("tool_calls") or []]
    return "\n".join([text, *blocks] if text else blocks) if blocks else text


def render_messages(messages: list[dict], tools: list[dict] | None = None) -> list[dict]:
    """The fallback rendering: plain `role`/`content` messages (an assistant turn's `weight` kept),
    tool schemas in the system turn (one is added when there is none), calls as `<tool_call>` lines."""
    plain = []
    for m in messages:
        turn = {"role": m["role"], "content": reply_text(m)}
        if m.get("weight") is not None:
            turn["weight"] = m["weight"]
        plain.append(turn)
    if tools:
        if plain and plain[0]["role"] == "system":
            plain[0] = {**plain[0], "content": f"{plain[0]['content']}\n\n{tools_text(tools)}"}
        else:
            plain.insert(0, {"role": "system", "content": tools_text(tools)})
    return plain


def native_messages(messages: list[dict]) -> list[dict]:
    """Messages for a template with tool support: each call's arguments as an object (what Hugging
    Face templates expect), no `weight` (the loss mask handles it) and no None-valued keys."""
    native = []
    for m in messages:
        turn = {k: v for k, v in m.items() if v is not None and k != "weight"}
        if m.get("tool_calls"):
            turn["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": parsed_arguments(c["function"].get("arguments"))}}
                for c in m["tool_calls"]
            ]
        native.append(turn)
    return native


def template_inputs(
    messages: list[dict], tools: list[dict] | None, chat_template: str | None
) -> tuple[list[dict], list[dict] | None]:
    """What to pass to `apply_chat_template` for a conversation: (messages, tools). The template's own
    tool support when it has any, else the fallback rendering (and no tools)."""
    if supports_tools(chat_template):
        return native_messages(messages), tools or None
    return render_messages(messages, tools), None


# A system text no template writes on its own: finding it in a rendering shows the system turn was kept.
_SYSTEM_PROBE = "SYSTEM-PROBE-4f1c"
# Whether a chat template renders a system turn, by template text (templates are few, rows are many).
_TAKES_SYSTEM: dict[str, bool] = {}


def takes_system(tokenizer, chat_template: str | None = None) -> bool:
    """Whether the chat template (`chat_template`, else the tokenizer's) renders a system turn: it
    renders [system, user] without an error and with the system text in it. Gemma's folds the system
    text into the first user turn itself (that counts); Mistral's v0.1 raises and Phi-3's original
    drops it silently (neither does)."""
    template = chat_template or getattr(tokenizer, "chat_template", None) or ""
    if template not in _TAKES_SYSTEM:
        probe = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "Hi"}]
        try:
            text = tokenizer.apply_chat_template(probe, chat_template=template or None, tokenize=False)
            _TAKES_SYSTEM[template] = _SYSTEM_PROBE in text
        except Exception:  # a template refuses roles with its own raise_exception: no system turn
            _TAKES_SYSTEM[template] = False
    return _TAKES_SYSTEM[template]


def with_system_folded(messages: list[dict]) -> list[dict]:
    """A leading system turn folded into the first user turn (its text, a blank line, the user's), as
    the templates that fold it themselves do (Gemma's): for templates that have no system turn."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0], list(messages[1:])
    first_user = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
    if first_user is None:
        return rest
    user = rest[first_user]
    rest[first_user] = {**user, "content": f"{system['content']}\n\n{user['content']}"}
    return rest


def chat_inputs(
    tokenizer, messages: list[dict], tools: list[dict] | None = None, chat_template: str | None = None
) -> tuple[list[dict], list[dict] | None]:
    """What to pass to `apply_chat_template` for a conversation with this tokenizer: `template_inputs`
    (tools the template's way or the fallback's), and a system turn folded into the first user turn
    when the template has none (`takes_system`). Every stage renders through this (or `render_text`)."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    rendered, native_tools = template_inputs(messages, tools, template)
    if rendered and rendered[0]["role"] == "system" and not takes_system(tokenizer, template):
        rendered = with_system_folded(rendered)
    return rendered, native_tools


def render_text(tokenizer, messages: list[dict], tools: list[dict] | None = None, chat_template=None, **kwargs) -> str:
    """A conversation as the text `tokenizer`'s chat template (or `chat_template`) makes of it, tools
    included; `kwargs` go to `apply_chat_template` (e.g. `add_generation_prompt=True` for a prompt)."""
    rendered, native_tools = chat_inputs(tokenizer, messages, tools, chat_template)
    if native_tools:
        kwargs["tools"] = native_tools
    if chat_template:
        kwargs["chat_template"] = chat_template
    return tokenizer.apply_chat_template(rendered, tokenize=False, **kwargs)


def _call(block: str) -> dict | None:
    """A `<tool_call>` block's JSON as an OpenAI tool call, or None when it is not one."""
    try:
        payload = json.loads(block)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return None
    arguments = parsed_arguments(payload.get("arguments", payload.get("parameters", {})))
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": payload["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def parse_reply(text: str) -> tuple[str, list[dict]]:
    """A generated reply as (content, tool_calls): every readable `<tool_call>` block becomes a call in
    the OpenAI shape (arguments as JSON text, a fresh `id`); the rest of the text is the content.
    A block that is not a JSON object with a `name` stays in the content."""
    calls, kept, end = [], [], 0
    for match in _CALL_BLOCK.finditer(text):
        call = _call(match.group(1))
        if call is None:
            continue
        calls.append(call)
        kept.append(text[end : match.start()])
        end = match.end()
    kept.append(text[end:])
    return "".join(kept).strip(), calls
