"""model_evaluation: base, challenger (and champion) scored on the same eval prompts."""

import hashlib
import json
import math
import time
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._chat_format import normalize, training_chat_template
from resources.mlflow_registry import CHAMPION, MlflowRegistry
from resources.models import ModelLoader
from resources.records import RecordSet

GENERAL_PROBE = Path(__file__).resolve().parents[1] / "pipelines" / "sample_data" / "general_probe.txt"
DEFAULT_PRIMARY = {"json": "exact_match", "open_ended": "rougeL"}


class EvaluationConfig(dg.ConfigurableResource):
    primary_metric: str = Field(
        default="auto",
        description="Metric the promotion gate compares; 'auto' picks exact_match when every expected "
        "answer is JSON, else rougeL.",
    )
    max_new_tokens: int = Field(default=48, description="Generation budget per answer (greedy decoding).")
    batch_size: int = Field(default=16, description="Prompts generated or scored together.")
    max_eval_examples: int = Field(
        default=0, description="Score at most this many eval examples (0: all), the same ones every time."
    )
    sample_rows: int = Field(default=12, description="Generations shown in the samples table.")
    probe_path: str = Field(
        default=str(GENERAL_PROBE),
        description="General text whose perplexity before and after fine-tuning measures forgetting.",
    )

    def settings_hash(self) -> str:
        """Identifies everything that makes two evaluations comparable, apart from the eval set."""
        probe = Path(self.probe_path).read_bytes()
        fields = {k: getattr(self, k) for k in ("max_new_tokens", "max_eval_examples")}
        payload = json.dumps(fields, sort_keys=True).encode() + hashlib.sha256(probe).digest()
        return hashlib.sha256(payload).hexdigest()[:16]


def parse_json(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return None


def task_type(expected: list[str]) -> str:
    """'json' when every expected answer parses as JSON, else 'open_ended'."""
    return "json" if expected and all(parse_json(e) is not None for e in expected) else "open_ended"


_rouge = None


def text_scores(prediction: str, expected: str) -> dict[str, float]:
    """ROUGE-L and token F1 (ROUGE-1 F-measure: unigram overlap) from rouge-score, chrF from sacrebleu."""
    global _rouge
    import sacrebleu
    from rouge_score import rouge_scorer

    _rouge = _rouge or rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    rouge = _rouge.score(expected, prediction)
    return {
        "rougeL": rouge["rougeL"].fmeasure,
        "token_f1": rouge["rouge1"].fmeasure,
        "chrf": sacrebleu.sentence_chrf(prediction, [expected]).score / 100,
    }


def score_answer(prediction: str, expected: str, task: str = "open_ended") -> dict[str, float]:
    """Per-example scores. For JSON tasks the comparison is on parsed values, so key order and
    spacing do not matter, and `json_valid` and `field_accuracy` (for objects) are added."""
    scores = text_scores(prediction, expected)
    if task != "json":
        scores["exact_match"] = float(normalize(prediction) == normalize(expected))
        return scores
    target, got = parse_json(expected), parse_json(prediction.strip())
    scores.update({"exact_match": float(got == target), "json_valid": float(got is not None)})
    if isinstance(target, dict) and target:
        got_fields = got if isinstance(got, dict) else {}
        scores["field_accuracy"] = sum(got_fields.get(k) == v for k, v in target.items()) / len(target)
    return scores


def mean_scores(per_example: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in per_example for k in s})
    return {k: sum(s.get(k, 0.0) for s in per_example) / len(per_example) for k in keys}


def generate(model, tokenizer, conversations, max_new_tokens: int, batch_size: int):
    """Greedy answers to each conversation's prompt (all but the last turn), batched, left-padded.
    Returns the answers, whether each stopped on its own before max_new_tokens, and tokens/s."""
    import torch

    tokenizer.padding_side = "left"
    answers, stopped, new_tokens, started = [], [], 0, time.time()
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
        eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                  else [model.generation_config.eos_token_id, tokenizer.eos_token_id])  # fmt: skip
        for row in generated.tolist():
            stopped.append(any(t in eos for t in row))
        new_tokens += int((generated != tokenizer.pad_token_id).sum())
        answers += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [a.strip() for a in answers], stopped, new_tokens / max(time.time() - started, 1e-9)


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


def probe_perplexity(model, tokenizer, text: str, window: int = 512) -> float:
    """Perplexity of plain text (no chat template), in windows of `window` tokens."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window].unsqueeze(0).to(model.device)
        if chunk.shape[1] < 2:
            break
        with torch.no_grad():
            loss = float(model(input_ids=chunk, labels=chunk).loss)
        total, count = total + loss * (chunk.shape[1] - 1), count + chunk.shape[1] - 1
    return math.exp(total / count)


def score_model(model, tokenizer, conversations, expected, template, task, evaluation: EvaluationConfig, probe):
    answers, stopped, speed = generate(
        model, tokenizer, conversations, evaluation.max_new_tokens, evaluation.batch_size
    )
    metrics = mean_scores([score_answer(a, e, task) for a, e in zip(answers, expected)])
    metrics["end_of_turn_rate"] = sum(stopped) / len(stopped)
    metrics["eval_loss"] = eval_loss(model, tokenizer, conversations, template, evaluation.batch_size)
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    metrics["probe_perplexity"] = probe_perplexity(model, tokenizer, probe)
    return metrics, answers, speed


def metrics_table(base: dict, tuned: dict, primary: str, champion: dict | None = None) -> str:
    head = "| metric | base | tuned | change |" + (" champion |" if champion else "")
    lines = [head, "|---|---|---|---|" + ("---|" if champion else "")]
    for key in sorted(tuned):
        mark = " (primary)" if key == primary else ""
        before = base.get(key, float("nan"))
        row = f"| {key}{mark} | {before:.4f} | {tuned[key]:.4f} | {tuned[key] - before:+.4f} |"
        if champion:
            row += f" {champion.get(key, float('nan')):.4f} |"
        lines.append(row)
    return "\n".join(lines)


def champion_scores(registry, eval_hash, settings_hash, base_model, score, tuned_model) -> dict | None:
    """The current champion's metrics on this very eval set and settings: taken from its run when
    it was evaluated the same way, else re-scored here (its adapter on the loaded base model, or its
    logged model when it was trained on another base)."""
    version = registry.version_by_alias(CHAMPION)
    if version is None:
        return None
    tags = version.tags or {}
    found = {"version": str(version.version), "rescored": False}
    if tags.get("data.eval_set_hash") == eval_hash and tags.get("eval.settings_hash") == settings_hash:
        metrics = registry.run_metrics(version.run_id)
        return {**found, "metrics": {k.removeprefix("tuned."): v for k, v in metrics.items() if k.startswith("tuned.")}}
    if tags.get("base_model") == base_model:
        tuned_model.load_adapter(registry.download(version.run_id, "adapter"), adapter_name="champion")
        tuned_model.set_adapter("champion")
        metrics, answers = score(tuned_model)
        tuned_model.set_adapter("default")
    else:
        from transformers import AutoModelForCausalLM

        folder = Path(registry.download_model(str(version.version)))
        weights = next(folder.rglob("config.json")).parent  # the merged model the pyfunc serves
        metrics, answers = score(AutoModelForCausalLM.from_pretrained(weights).eval())
    return {**found, "rescored": True, "metrics": metrics, "answers": answers}


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
    instruction_pairs: RecordSet,
    models: ModelLoader,
    mlflow_registry: MlflowRegistry,
) -> dict:
    """The base model, the fine-tuned model (challenger) and the current champion on the same eval
    prompts with the same greedy decoding, from one load of the base model (adapters switched on
    it). Metrics per model: exact match; JSON validity and field accuracy for JSON answers; ROUGE-L,
    token F1 and chrF for text; end-of-turn rate; eval loss and perplexity on the assistant's
    tokens; perplexity on a general-text probe, whose rise is the forgetting. Plus the primary
    metric's name, the task type, the eval set's hash, and sample generations.
    """
    from peft import PeftModel

    evals = instruction_pairs.frame(where=[("split", "=", "eval"), ("kind", "=", "sft")])
    evals = evals.sort_values("example_id")
    if evaluation.max_eval_examples:
        evals = evals.head(evaluation.max_eval_examples)
    conversations = list(evals["messages"])
    expected = [c[-1]["content"] for c in conversations]
    task = task_type(expected)
    primary = DEFAULT_PRIMARY[task] if evaluation.primary_metric == "auto" else evaluation.primary_metric
    probe = Path(evaluation.probe_path).read_text(encoding="utf-8")
    eval_hash = hashlib.sha256("\n".join(evals["example_id"]).encode()).hexdigest()[:16]
    settings_hash = evaluation.settings_hash()

    tokenizer = models.load_tokenizer(base_model)
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    model = models.load_model(base_model).eval()
    speeds = {}

    def score(m, name="model"):
        metrics, answers, speeds[name] = score_model(
            m, tokenizer, conversations, expected, template, task, evaluation, probe
        )
        return metrics, answers

    base, base_answers = score(model, "base")
    tuned_model = PeftModel.from_pretrained(model, fine_tuned_model["adapter_dir"]).eval()
    tuned, tuned_answers = score(tuned_model, "tuned")
    if primary not in tuned:
        raise ValueError(
            f"primary_metric {primary!r} is not among the computed metrics ({', '.join(sorted(tuned))}); "
            "set evaluation.primary_metric to one of them, or to auto."
        )
    champion = champion_scores(mlflow_registry, eval_hash, settings_hash, base_model, score, tuned_model)
    forgetting = 100 * (tuned["probe_perplexity"] / base["probe_perplexity"] - 1)

    samples = pd.DataFrame(
        {
            "prompt": [c[-2]["content"] for c in conversations],
            "expected": expected,
            "base": base_answers,
            "tuned": tuned_answers,
        }
    )
    if champion and champion.get("answers"):
        samples["champion"] = champion.pop("answers")
    context.add_output_metadata(
        {
            "primary_metric": primary,
            "task_type": task,
            f"base_{primary}": base[primary],
            f"tuned_{primary}": tuned[primary],
            "forgetting_pct": round(forgetting, 2),
            "champion": dg.MetadataValue.json(
                {k: v for k, v in champion.items() if k != "metrics"} if champion else {"version": None}
            ),
            "eval_examples": len(conversations),
            "eval_set_hash": eval_hash,
            "metrics": dg.MetadataValue.md(metrics_table(base, tuned, primary, champion and champion["metrics"])),
            "samples": dg.MetadataValue.md(samples.head(evaluation.sample_rows).to_markdown(index=False)),
            "generation_tokens_per_second": dg.MetadataValue.json({k: round(v, 1) for k, v in speeds.items()}),
        }
    )
    return {
        "primary_metric": primary,
        "task_type": task,
        "base": base,
        "tuned": tuned,
        "champion": champion,
        "forgetting_pct": forgetting,
        "eval_examples": len(conversations),
        "eval_set_hash": eval_hash,
        "settings_hash": settings_hash,
        "samples": samples.to_dict("records"),
        "generation_tokens_per_second": speeds,
    }
