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
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ChatModel(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # The signature's default, passed as model_config when the model was logged.
        self.default_max_new_tokens = int(context.model_config["default_max_new_tokens"])
        folder = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def reply(self, messages: list[dict], max_new_tokens: int, temperature: float) -> dict:
        import torch

        enc = self.tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
            )
        generated = out[0, enc["input_ids"].shape[1] :].tolist()
        stop_ids = {self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id}
        return {
            "role": "assistant",
            "content": self.tokenizer.decode(generated, skip_special_tokens=True).strip(),
            "finish_reason": "stop" if any(t in stop_ids for t in generated) else "length",
        }

    def predict(self, context, model_input, params=None):
        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens") or self.default_max_new_tokens)
        temperature = float(params.get("temperature") or 0.0)
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else model_input
        return pd.DataFrame([self.reply(list(r["messages"]), max_new_tokens, temperature) for r in rows])


mlflow.models.set_model(ChatModel())
