"""Base models of other families, offline: tiny random models that carry each family's published chat template.

No model hub is reachable here, so a "Llama 3" or "Gemma 3" base is a model of that family's architecture
(its transformers config class, a few layers, hidden size 16, random weights) with the bundled SmolLM2
tokenizer extended by the family's special tokens, the family's bos/eos/pad/unk, its end-of-turn token, its
generation config's eos list, and its chat template copied verbatim from the published tokenizer_config.json.
What is *not* the family's: the vocabulary and the pre-tokenizer (SmolLM2's byte-level BPE, not Llama 3's
tiktoken BPE, Qwen's BPE or the SentencePiece of Gemma, Mistral and Phi-3), so token ids and how spaces
fold into tokens differ from the real models; the chat format, the special tokens and the stop tokens are
the real ones.

`build_family_model(name, folder)` writes a loadable Hugging Face folder (safetensors, tokenizer, chat
template, generation_config.json). `FAMILIES` lists the names; `FAMILY_SPECS[name]` says what each one is.
"""
# The templates below are verbatim; their long lines stay as published.
# ruff: noqa: E501

import hashlib
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------------------------
# Published chat templates, verbatim (the `chat_template` string of each model's tokenizer_config.json).
# Each was taken from a public repository that copies it from the hub, noted above it, and the copies were
# compared where more than one was found. Raw strings: a backslash in a template is part of the template.
# --------------------------------------------------------------------------------------------------------

# meta-llama/Llama-3.2-1B-Instruct (and -3B-Instruct, the same template).
# From guidance-ai/guidance at 5413339a, guidance/chat.py (`llama3dot2_template`, added in 9346abe6 "Add
# Llama3.2 chat template"); identical, up to line endings, to ggml-org/llama.cpp models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja
# (as stored in the fork ye-NX/llama.cpp at b354d7c9).
LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Qwen/Qwen2.5-0.5B-Instruct, tokenizer_config.json at hub revision 7ae557604adf67be50417f59c2c2f167def9a775.
# From guidance-ai/guidance at 5413339a, guidance/chat.py (`qwen2dot5_it_template`), whose test
# tests/need_credentials/test_chat_templates.py asserts it equals the hub tokenizer's chat_template.
# Identical to the copy in ShishirPatil/gorilla berkeley-function-call-leaderboard/bfcl/model_handler/
# local_inference/qwen.py (as of commit d04871eb^).
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# google/gemma-3-1b-it (Gemma 3 instruct; the handler it comes from serves the 1b/4b/12b/27b-it models with it).
# From ShishirPatil/gorilla at 6ea57973, berkeley-function-call-leaderboard/bfcl_eval/model_handler/local_inference/gemma.py
# (the tokenizer_config.json excerpt in `_format_prompt`'s docstring, added with "[BFCL] Add Google
# Gemma-3 Series Models (#939)"), JSON-decoded. A system message has no turn of its own: it is folded into
# the first user turn; roles must strictly alternate.
GEMMA3_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""

# mistralai/Mistral-7B-Instruct-v0.2 (the template published since mid-2024, which folds an optional system
# message into the first [INST]). v0.2, not v0.3: v0.3's published template (tool calls, [AVAILABLE_TOOLS])
# was not found verbatim in a source that could be checked; v0.2's was.
# From guidance-ai/guidance at 5413339a, guidance/chat.py (`mistral_7b_instruct_template`, updated in 22e744b1),
# whose test tests/need_credentials/test_chat_templates.py asserts it equals the hub tokenizer's chat_template.
# [INST] and [/INST] are plain text in v0.2 (control tokens only from v0.3); `</s>` ends each answer.
MISTRAL_TEMPLATE = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# microsoft/Phi-3-mini-4k-instruct.
# From guidance-ai/guidance at 5413339a, guidance/chat.py (`phi3_mini_template`, "https://huggingface.co/microsoft/
# Phi-3-mini-4k-instruct/blob/main/tokenizer_config.json#L119"), checked against the hub by the same test.
# The newlines inside its quoted strings are real newlines (the JSON has "\n", not "\\n").
PHI3_TEMPLATE = r"""{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'user' %}{{'<|user|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>
' + message['content'] + '<|end|>
'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>
' }}{% else %}{{ eos_token }}{% endif %}"""

# sha256 of each template above: a guard against an accidental edit of a verbatim copy.
TEMPLATE_SHA256 = {
    "llama3": "5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4",
    "qwen2.5": "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f",
    "gemma3": "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4",
    "mistral": "796853172235ab3aaa4810013ddfe2eab481bda3306dad4f700c00d436eed596",
    "phi3": "dcaee66df77bfbb789ec541fe713218da30225a526f1db97138fc39ee6dc56aa",
}


@dataclass(frozen=True)
class Family:
    """One model family as published: its tokens, its chat format, what stops generation."""

    name: str
    published_as: str  # the hub model whose tokenizer_config / generation_config these follow
    architecture: str  # the transformers model_type: llama, qwen2, gemma3_text, mistral, phi3
    chat_template: str | None  # None: a pretrained base as published, without a chat template
    end_of_turn: str  # the token the template writes right after an assistant's answer
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id, as tokens, in published order
    system_turn: bool  # a system message gets a turn of its own (False: folded into the first user turn)
    strict_alternation: bool  # the template raises unless user/assistant alternate
    bos_token: str | None
    eos_token: str  # the tokenizer's eos_token (tokenizer_config.json), not always the end of turn
    pad_token: str | None
    unk_token: str | None
    special_tokens: tuple[str, ...]  # the family's special tokens (bos/eos/pad/unk included), published id order
    added_tokens: tuple[str, ...] = ()  # tokens the family adds as *non-special* (kept by skip_special_tokens)
    add_bos: bool = False  # the tokenizer prepends bos when encoding with add_special_tokens=True
    notes: str = ""


FAMILY_SPECS: dict[str, Family] = {
    "llama3": Family(
        name="llama3",
        published_as="meta-llama/Llama-3.2-1B-Instruct",
        architecture="llama",
        chat_template=LLAMA3_TEMPLATE,
        end_of_turn="<|eot_id|>",
        # generation_config.json: eos_token_id [128001, 128008, 128009].
        generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        system_turn=True,  # always writes a system header (Cutting Knowledge Date / Today Date), even without one
        strict_alternation=False,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=None,  # none published
        unk_token=None,
        # 128000-128010 without the reserved ones (the 248 <|reserved_special_token_N|> are left out).
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ),
        add_bos=True,
        notes="The template prepends bos_token itself: tokenizing its output with add_special_tokens=True doubles it.",
    ),
    "qwen2.5": Family(
        name="qwen2.5",
        published_as="Qwen/Qwen2.5-0.5B-Instruct",
        architecture="qwen2",
        chat_template=QWEN25_TEMPLATE,
        end_of_turn="<|im_end|>",
        # generation_config.json: eos_token_id [151645, 151643], pad_token_id 151643.
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        system_turn=True,  # writes a default system turn ("You are Qwen, ...") when there is none
        strict_alternation=False,
        bos_token=None,  # "bos_token": null
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        # 151643-151656, all special.
        special_tokens=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
        # 151657-151664: added tokens with "special": false.
        added_tokens=(
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
        ),
    ),
    "gemma3": Family(
        name="gemma3",
        published_as="google/gemma-3-1b-it",
        architecture="gemma3_text",
        chat_template=GEMMA3_TEMPLATE,
        end_of_turn="<end_of_turn>",
        # generation_config.json: eos_token_id [1, 106], pad_token_id 0, bos_token_id 2.
        generation_eos=("<eos>", "<end_of_turn>"),
        system_turn=False,  # folded into the first user turn, followed by a blank line
        strict_alternation=True,  # "Conversation roles must alternate user/assistant/user/assistant/..."
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        special_tokens=(
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
        add_bos=True,
        notes="The assistant's role is written 'model'. The template prepends bos_token itself.",
    ),
    "mistral": Family(
        name="mistral",
        published_as="mistralai/Mistral-7B-Instruct-v0.2",
        architecture="mistral",
        chat_template=MISTRAL_TEMPLATE,
        end_of_turn="</s>",
        # generation_config.json: eos_token_id 2.
        generation_eos=("</s>",),
        system_turn=False,  # folded into the first [INST], followed by a blank line
        strict_alternation=True,  # "After the optional system message, conversation roles must alternate ..."
        bos_token="<s>",
        eos_token="</s>",
        pad_token=None,  # none published
        unk_token="<unk>",
        special_tokens=("<unk>", "<s>", "</s>"),
        add_bos=True,
        notes="The end of turn is the eos token itself. The template prepends bos_token itself.",
    ),
    "phi3": Family(
        name="phi3",
        published_as="microsoft/Phi-3-mini-4k-instruct",
        architecture="phi3",
        chat_template=PHI3_TEMPLATE,
        end_of_turn="<|end|>",
        # generation_config.json: eos_token_id [32000, 32001, 32007] (<|assistant|> included), pad_token_id 32000.
        generation_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"),
        system_turn=True,
        strict_alternation=False,
        bos_token="<s>",
        eos_token="<|endoftext|>",  # the template appends it after the last turn unless add_generation_prompt
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        # 0-2 and 32000-32010.
        special_tokens=(
            "<unk>",
            "<s>",
            "</s>",
            "<|endoftext|>",
            "<|assistant|>",
            "<|placeholder1|>",
            "<|placeholder2|>",
            "<|placeholder3|>",
            "<|placeholder4|>",
            "<|system|>",
            "<|end|>",
            "<|placeholder5|>",
            "<|placeholder6|>",
            "<|user|>",
        ),
        add_bos=False,  # "add_bos_token": false, and the template writes no bos
        notes="Fused qkv_proj and gate_up_proj: LoRA target names differ from Llama's.",
    ),
    "no-template": Family(
        name="no-template",
        published_as="a pretrained base without a chat template, as HuggingFaceTB/SmolLM2-135M is published",
        architecture="llama",
        chat_template=None,
        end_of_turn="<|endoftext|>",  # no turns: the document ends with eos
        generation_eos=("<|endoftext|>",),
        system_turn=False,
        strict_alternation=False,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token=None,
        unk_token="<|endoftext|>",
        special_tokens=("<|endoftext|>",),
        notes="apply_chat_template raises: the pipeline has to supply a template for it.",
    ),
}

FAMILIES: tuple[str, ...] = tuple(FAMILY_SPECS)

# Tiny: trains in seconds on a CPU. The embedding (vocabulary x 16) holds almost all parameters.
HIDDEN_SIZE = 16
NUM_LAYERS = 2
CONTEXT = 4096


def template_sha256(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def load_bundled_tokenizer():
    """The SmolLM2 tokenizer read from the bundled GGUF file (a few seconds: pass a saved folder instead)."""
    from transformers import AutoTokenizer

    from resources.models import bundled_gguf

    gguf = bundled_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def build_family_tokenizer(family: str, base_tokenizer: Path | None = None):
    """The bundled tokenizer turned into `family`'s: its special tokens, bos/eos/pad/unk, bos rule, chat template.

    `base_tokenizer`: a folder holding the bundled tokenizer already saved (tests/conftest.py's
    `bundled_tokenizer_dir`); without it the GGUF file is read, which takes a few seconds.
    """
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    spec = FAMILY_SPECS[family]
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer) if base_tokenizer else load_bundled_tokenizer()

    # New tokens get ids after the base vocabulary, in the family's published order.
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in spec.special_tokens], special_tokens=True
    )
    if spec.added_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.added_tokens])

    roles = {
        "bos_token": spec.bos_token,
        "eos_token": spec.eos_token,
        "pad_token": spec.pad_token,
        "unk_token": spec.unk_token,
    }
    extra = [t for t in spec.special_tokens if t not in roles.values()]
    tokenizer.add_special_tokens({k: v for k, v in roles.items() if v is not None} | {"extra_special_tokens": extra})
    for role, token in roles.items():
        if token is None:  # the base tokenizer's own (<|im_start|> as bos, ...) must not leak into the family
            setattr(tokenizer, role, None)

    tokenizer.add_bos_token = spec.add_bos
    tokenizer.add_eos_token = False
    tokenizer.update_post_processor()
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def _model_config(spec: Family, tokenizer):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in spec.generation_eos]
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": HIDDEN_SIZE // 4,
        "max_position_embeddings": CONTEXT,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0],
        "pad_token_id": tokenizer.pad_token_id,
    }
    if spec.architecture == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)  # Llama 3.2 1B/3B tie them
    if spec.architecture == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False)  # as Qwen2.5-0.5B
    if spec.architecture == "gemma3_text":
        # Gemma 3 alternates sliding-window (local) and full (global) attention layers; one of each keeps
        # both code paths and the hybrid cache. The published window is 512; here it spans the whole context,
        # so it never cuts attention and generation behaves as with full attention everywhere.
        return Gemma3TextConfig(
            **common,
            query_pre_attn_scalar=HIDDEN_SIZE // 4,
            sliding_window=CONTEXT,
            layer_types=["sliding_attention", "full_attention"],
            tie_word_embeddings=True,
        )
    if spec.architecture == "mistral":
        return MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)  # v0.2: no sliding window
    if spec.architecture == "phi3":
        # Phi-3-mini-4k publishes sliding_window 2047; None keeps every context length plain full attention.
        return Phi3Config(
            **common, original_max_position_embeddings=CONTEXT, sliding_window=None, tie_word_embeddings=False
        )
    raise ValueError(f"unknown architecture {spec.architecture!r}")


_MODEL_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


def model_class_name(family: str) -> str:
    return _MODEL_CLASSES[FAMILY_SPECS[family].architecture]


def build_family_model(family: str, folder: Path, base_tokenizer: Path | None = None, seed: int = 0) -> Path:
    """Write a loadable Hugging Face folder for `family`: a tiny random model (safetensors), its tokenizer
    with the family's chat template, and generation_config.json with the family's eos list. Returns `folder`.
    """
    import torch
    import transformers
    from transformers import GenerationConfig

    if family not in FAMILY_SPECS:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    spec = FAMILY_SPECS[family]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer = build_family_tokenizer(family, base_tokenizer)
    config = _model_config(spec, tokenizer)
    torch.manual_seed(seed)
    model = getattr(transformers, _MODEL_CLASSES[spec.architecture])(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)  # safetensors
    tokenizer.save_pretrained(folder)
    return folder
