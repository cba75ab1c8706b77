"""The served model: chat messages in, the fine-tuned model's reply out.

An MLflow pyfunc logged as code (`MlflowRegistry.log_chat_model` passes this file's path to
`mlflow.pyfunc.log_model(python_model=...)`) with the merged model folder as its artifact, so it
loads anywhere MLflow and transformers are installed. It imports nothing from this project, and
nothing in the project imports it: MLflow executes it when it loads the model, which is when the
`set_model` call at the bottom must run. Its signature is declared in `resources/mlflow_registry.py`.
Generation parameters come per request through the signature's params:

    POST /invocations
    {"dataframe_records": [{"messages": [{"role": "user", "content": "..."}]}],
     "params": {"max_new_tokens": 64, "temperature": 0.0}}

`temperature` 0 (the default) decodes greedily, exactly as the evaluation did; above 0 it samples.
A reply ends on any end token the model's generation config declares (the base model's own, and the
end-of-turn token of its chat template, added when the base model was prepared).

Limits: one request may ask for at most `max_new_tokens_limit` new tokens (1024), hold at most
`max_rows_per_request` rows (16), and each row's messages and tools at most `max_chars_per_row`
characters (32,000); a request over a limit is refused with HTTP 400 and a message naming the limit,
before anything is generated. The logged model's `model_config` may set each. Weights load from
safetensors only, and the model's own Python code never runs (`trust_remote_code` off).

Tool calling: a request row may carry `tools` (OpenAI function schemas) and messages with
`tool_calls` and `tool` turns. They are rendered by the module `tool_calls` (the project's
`assets/domain/tool_calls.py`, logged beside this file through `code_paths`, so a request is rendered
exactly as the training examples were, a system turn folded into the first user turn where the
model's chat template has none), and the reply's `<tool_call>` blocks come back parsed as
`tool_calls` (OpenAI shape, `finish_reason` "tool_calls"); `tool_calls` is null when none was made.
"""

import json

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

# One request's caps, unless the logged model's model_config sets them: generation is what costs,
# so a caller cannot tie the server up with one huge reply or prompt.
LIMITS = {"max_new_tokens_limit": 1024, "max_rows_per_request": 16, "max_chars_per_row": 32_000}


class ChatModel(PythonModel):
    limits = LIMITS

    def load_context(self, context):
        import tool_calls  # logged beside this file (code_paths): the rendering training used
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.rendering = tool_calls
        # The signature's default, passed as model_config when the model was logged.
        self.default_max_new_tokens = int(context.model_config["default_max_new_tokens"])
        self.limits = {name: int(context.model_config.get(name, cap)) for name, cap in LIMITS.items()}
        folder = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        self.model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        ).eval()
        self.stop_ids = end_tokens(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)

    def reply(self, messages: list[dict], tools: list | None, max_new_tokens: int, temperature: float) -> dict:
        import torch

        rendered, native_tools = self.rendering.chat_inputs(self.tokenizer, messages, tools)
        enc = self.tokenizer.apply_chat_template(
            rendered,
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
            **({"tools": native_tools} if native_tools else {}),
        )
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
            )
        generated = out[0, enc["input_ids"].shape[1] :].tolist()
        text = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
        return self.assemble(text, "stop" if any(t in self.stop_ids for t in generated) else "length")

    def assemble(self, text: str, finish_reason: str) -> dict:
        """The response row for a generated text: its content, and the tool calls parsed out of it."""
        content, calls = self.rendering.parse_reply(text)
        return {
            "role": "assistant",
            "content": content,
            "finish_reason": "tool_calls" if calls else finish_reason,
            "tool_calls": calls or None,
        }

    def predict(self, context, model_input, params=None):
        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens") or self.default_max_new_tokens)
        temperature = float(params.get("temperature") or 0.0)
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else model_input
        check_request(rows, max_new_tokens, self.limits)
        replies = [
            self.reply(request_messages(r["messages"]), request_tools(r.get("tools")), max_new_tokens, temperature)
            for r in rows
        ]
        return pd.DataFrame(replies)


def end_tokens(declared, eos_token_id) -> set[int]:
    """The ids that end a reply: every end token the generation config declares (one id or a list:
    Llama 3, Qwen 2.5 and Gemma 3 list several) and the tokenizer's end-of-sequence token."""
    ids = declared if isinstance(declared, list | tuple) else [declared]
    return {t for t in [*ids, eos_token_id] if t is not None}


def check_request(rows: list[dict], max_new_tokens: int, limits: dict[str, int]) -> None:
    """Refuse a request over one of `limits` (HTTP 400 from the scoring server), naming the limit."""
    if not 1 <= max_new_tokens <= limits["max_new_tokens_limit"]:
        refuse(f"max_new_tokens={max_new_tokens} is outside 1..{limits['max_new_tokens_limit']}, this model's limit.")
    if len(rows) > limits["max_rows_per_request"]:
        refuse(f"{len(rows)} rows in one request; this model takes at most {limits['max_rows_per_request']}.")
    for i, row in enumerate(rows):
        size = len(json.dumps([row.get("messages"), row.get("tools")], default=str))
        if size > limits["max_chars_per_row"]:
            refuse(
                f"row {i} holds {size} characters of messages and tools; the limit is {limits['max_chars_per_row']}."
            )


def refuse(reason: str):
    raise MlflowException.invalid_parameter_value(f"Request refused: {reason} Split it or ask for less.")


def request_messages(messages) -> list[dict]:
    """A request's messages without the empty fields the schema fills in (templates test whether a
    key is defined), content defaulting to "" (an assistant turn may hold only tool calls)."""
    cleaned = []
    for m in messages:
        m = {k: v for k, v in dict(m).items() if v is not None}
        cleaned.append({**m, "content": m.get("content") or ""})
    return cleaned


def request_tools(tools) -> list | None:
    """A request row's `tools`: a list, JSON text of one, or missing (None, or NaN in a frame)."""
    if isinstance(tools, str):
        tools = json.loads(tools)
    return list(tools) if isinstance(tools, list | tuple) and len(tools) else None


mlflow.models.set_model(ChatModel())
