"""model_evaluation: base and fine-tuned model scored on the same eval prompts."""

import hashlib
import json
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._chat_format import normalize, training_chat_template
from resources.models import ModelLoader


class EvaluationConfig(dg.ConfigurableResource):
    primary_metric: str = Field(
        default="exact_match", description="Metric the promotion gate compares (a key of the metrics table)."
    )
    max_new_tokens: int = Field(default=48, description="Generation budget per answer (greedy decoding).")
    batch_size: int = Field(default=16, description="Prompts generated or scored together.")
    max_eval_examples: int = Field(
        default=0, description="Score at most this many eval examples (0: all), the same ones every time."
    )
    sample_rows: int = Field(default=12, description="Generations shown in the samples table.")


def parse_json(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return None


def score_answer(prediction: str, expected: str) -> dict[str, float]:
    """Per-example scores. When the expected answer is JSON the comparison is on parsed values, so
    key order and spacing do not matter; `json_valid` and `field_accuracy` are then defined too."""
    target = parse_json(expected)
    if target is None:
        return {"exact_match": float(normalize(prediction) == normalize(expected))}
    got = parse_json(prediction.strip())
    scores = {"exact_match": float(got == target), "json_valid": float(got is not None)}
    if isinstance(target, dict) and target:
        got_fields = got if isinstance(got, dict) else {}
        scores["field_accuracy"] = sum(got_fields.get(k) == v for k, v in target.items()) / len(target)
    return scores


def mean_scores(per_example: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in per_example for k in s})
    return {k: sum(s.get(k, 0.0) for s in per_example) / len(per_example) for k in keys}


def generate(model, tokenizer, conversations, max_new_tokens: int, batch_size: int):
    """Greedy answers to each conversation's prompt (all but the last turn), batched, left-padded."""
    import torch

    tokenizer.padding_side = "left"
    answers, new_tokens, started = [], 0, time.time()
    for i in range(0, len(conversations), batch_size):
        prompts = [c[:-1] for c in conversations[i : i + batch_size]]
        enc = tokenizer.apply_chat_template(
            prompts, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        ).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        generated = out[:, enc["input_ids"].shape[1] :]
        new_tokens += int((generated != tokenizer.pad_token_id).sum())
        answers += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [a.strip() for a in answers], new_tokens / max(time.time() - started, 1e-9)


def eval_loss(model, tokenizer, conversations, chat_template, batch_size: int) -> float:
    """Mean cross-entropy on the assistant's tokens of the eval conversations."""
    import torch

    tokenizer.padding_side = "right"
    total, count = 0.0, 0
    for i in range(0, len(conversations), batch_size):
        enc = tokenizer.apply_chat_template(
            conversations[i : i + batch_size],
            chat_template=chat_template,
            return_dict=True,
            return_assistant_tokens_mask=True,
            padding=True,
            return_tensors="pt",
        )
        labels = enc["input_ids"].clone()
        labels[enc["assistant_masks"] == 0] = -100
        with torch.no_grad():
            out = model(
                input_ids=enc["input_ids"].to(model.device),
                attention_mask=enc["attention_mask"].to(model.device),
                labels=labels.to(model.device),
            )
        n = int((labels[:, 1:] != -100).sum())
        total, count = total + float(out.loss) * n, count + n
    return total / count


def score_model(model, tokenizer, conversations, expected, template, config: EvaluationConfig):
    answers, speed = generate(model, tokenizer, conversations, config.max_new_tokens, config.batch_size)
    metrics = mean_scores([score_answer(a, e) for a, e in zip(answers, expected)])
    metrics["eval_loss"] = eval_loss(model, tokenizer, conversations, template, config.batch_size)
    return metrics, answers, speed


def metrics_table(base: dict, tuned: dict, primary: str) -> str:
    lines = ["| metric | base | tuned | change |", "|---|---|---|---|"]
    for key in sorted(base):
        mark = " (primary)" if key == primary else ""
        lines.append(f"| {key}{mark} | {base[key]:.4f} | {tuned[key]:.4f} | {tuned[key] - base[key]:+.4f} |")
    return "\n".join(lines)


@dg.asset(
    group_name="model",
    kinds={"pytorch"},
    pool="training",
    automation_condition=dg.AutomationCondition.eager(),
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    evaluation: EvaluationConfig,
    base_model: str,
    fine_tuned_model: dict,
    instruction_pairs: pd.DataFrame,
    models: ModelLoader,
) -> dict:
    """The base model and the fine-tuned model (base + adapter) on the same eval prompts with the
    same greedy decoding: per-model metrics (exact match of the answer, JSON validity and field
    accuracy for JSON answers, eval loss on the assistant's tokens), the primary metric's name, and
    sample generations (prompt, expected, base, tuned).
    """
    from peft import PeftModel

    evals = instruction_pairs[(instruction_pairs["split"] == "eval") & (instruction_pairs["kind"] == "sft")]
    evals = evals.sort_values("example_id")
    if evaluation.max_eval_examples:
        evals = evals.head(evaluation.max_eval_examples)
    conversations = list(evals["messages"])
    expected = [c[-1]["content"] for c in conversations]

    tokenizer = models.load_tokenizer(base_model)
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    model = models.load_model(base_model).eval()
    base, base_answers, base_speed = score_model(model, tokenizer, conversations, expected, template, evaluation)
    tuned_model = PeftModel.from_pretrained(model, fine_tuned_model["adapter_dir"]).eval()
    tuned, tuned_answers, tuned_speed = score_model(
        tuned_model, tokenizer, conversations, expected, template, evaluation
    )
    if evaluation.primary_metric not in tuned:
        raise ValueError(
            f"primary_metric {evaluation.primary_metric!r} is not among the computed metrics "
            f"({', '.join(sorted(tuned))}); set EvaluationConfig.primary_metric to one of them."
        )

    samples = pd.DataFrame(
        {
            "prompt": [c[-2]["content"] for c in conversations],
            "expected": expected,
            "base": base_answers,
            "tuned": tuned_answers,
        }
    )
    eval_hash = hashlib.sha256("\n".join(evals["example_id"]).encode()).hexdigest()[:16]
    primary = evaluation.primary_metric
    context.add_output_metadata(
        {
            "primary_metric": primary,
            f"base_{primary}": base[primary],
            f"tuned_{primary}": tuned[primary],
            "eval_examples": len(conversations),
            "eval_set_hash": eval_hash,
            "metrics": dg.MetadataValue.md(metrics_table(base, tuned, primary)),
            "samples": dg.MetadataValue.md(samples.head(evaluation.sample_rows).to_markdown(index=False)),
            "generation_tokens_per_second": round(tuned_speed, 1),
        }
    )
    return {
        "primary_metric": primary,
        "base": base,
        "tuned": tuned,
        "eval_examples": len(conversations),
        "eval_set_hash": eval_hash,
        "samples": samples.to_dict("records"),
        "generation_tokens_per_second": {"base": base_speed, "tuned": tuned_speed},
    }
