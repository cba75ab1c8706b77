"""Benchmark suites scored through lm-evaluation-harness: a user's local benchmark file (JSONL or
Parquet) becomes one of the harness's custom tasks, and the harness scores a loaded model on it,
item by item.

Two kinds of file, by their columns:
- multiple choice: `question`, `choices` (a list) and `answer` (the right choice's index, its letter
  A, B, ..., or its text); scored by the log-likelihood of each choice after the question (`acc`:
  the likeliest choice is the right one);
- prompt and reference: `prompt` and `reference`; the model's greedy answer compared with the
  reference by `exact_match` (case and punctuation ignored) or `rougeL` (ROUGE-L F1, `rouge-score`).

Every model is scored with the same chat template (the one training renders with), batch size and
decoding, so the scores of base, candidate and champion pair up item by item (the gate's intervals).
The harness's own index of built-in tasks is never read, nor the Hub: the data loads through the
`json`/`parquet` builders of `datasets`.
"""

import os
from dataclasses import dataclass
from pathlib import Path

# The metrics a suite may ask for, by kind: each is computed locally (any other name would send the
# harness to `evaluate.load`, which needs the Hub).
MULTIPLE_CHOICE, GENERATION = "multiple_choice", "generation"
METRICS = {MULTIPLE_CHOICE: ("acc", "acc_norm"), GENERATION: ("exact_match", "rougeL")}
COLUMNS = {MULTIPLE_CHOICE: ("question", "choices", "answer"), GENERATION: ("prompt", "reference")}
_MEAN = {"aggregation": "mean", "higher_is_better": True}
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Suite:
    """One benchmark file and how to score it."""

    name: str
    path: str
    kind: str
    metric: str
    max_new_tokens: int = 64
    """Generation budget per answer (prompt and reference suites)."""
    max_regression: float | None = None
    """How far the gate lets a candidate fall below the base and the champion here (None: not gated);
    carried along for the gate, not used in scoring."""


def suite_kind(path: str) -> str:
    """The suite's kind from its file's columns; an error naming the file and the columns it needs
    when it has neither set."""
    columns = set(_load(path).column_names)
    for kind, needed in COLUMNS.items():
        if set(needed) <= columns:
            return kind
    wanted = " or ".join(", ".join(needed) for needed in COLUMNS.values())
    raise ValueError(f"{path}: a benchmark suite needs the columns {wanted}; it has {', '.join(sorted(columns))}")


def _load(path: str):
    from datasets import load_dataset

    builder = "parquet" if Path(path).suffix == ".parquet" else "json"
    return load_dataset(builder, data_files={"test": str(Path(path).resolve())}, split="test")


def answer_index(doc: dict) -> dict:
    """A multiple-choice row with its `answer` as the right choice's index (given as an index, a
    letter or the choice's text); an error naming the row when it is none of them."""
    answer, choices = doc["answer"], list(doc["choices"])
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return {"answer": answer}
    text = str(answer).strip()
    if text in choices:
        return {"answer": choices.index(text)}
    if len(text) == 1 and text.upper() in _LETTERS[: len(choices)]:
        return {"answer": _LETTERS.index(text.upper())}
    raise ValueError(f"answer {answer!r} is not an index, letter or text of the choices {choices}")


def _rouge_l(doc: dict, results: list[str]) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return {"rougeL": scorer.score(doc["reference"], results[0].strip())["rougeL"].fmeasure}


def _answer_indices(dataset):
    for row, doc in enumerate(dataset):
        try:
            answer_index(doc)
        except ValueError as error:
            raise ValueError(f"row {row + 1}: {error}") from None
    return dataset.map(answer_index)


def task_config(suite: Suite) -> dict:
    """The harness's task for the suite: its file through the `datasets` builder, the prompt, the
    metric computed per item."""
    builder = "parquet" if Path(suite.path).suffix == ".parquet" else "json"
    config = {
        "task": f"suite_{suite.name}",
        "dataset_path": builder,
        "dataset_kwargs": {"data_files": {"test": str(Path(suite.path).resolve())}},
        "test_split": "test",
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }
    if suite.kind == MULTIPLE_CHOICE:
        return config | {
            "output_type": "multiple_choice",
            "process_docs": _answer_indices,
            "doc_to_text": "{{question}}",
            "doc_to_choice": "choices",
            "doc_to_target": "answer",
            "metric_list": [{"metric": suite.metric, **_MEAN}],
        }
    config |= {
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "reference",
        "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": suite.max_new_tokens, "do_sample": False},
    }
    if suite.metric == "rougeL":
        return config | {"process_results": _rouge_l, "metric_list": [{"metric": "rougeL", **_MEAN}]}
    strip = [{"function": "remove_whitespace"}, {"function": "take_first"}]
    return config | {
        "filter_list": [{"name": "strip", "filter": strip}],
        "metric_list": [{"metric": "exact_match", **_MEAN, "ignore_case": True, "ignore_punctuation": True}],
    }


def score_suite(model, tokenizer, suite: Suite, chat_template: str | None, batch_size: int) -> list[float]:
    """The model's score on each item of the suite, in the file's row order, through the harness:
    the question or prompt as the user's turn of `chat_template` (None: plain text), each choice or
    the greedy answer as the assistant's reply."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    chat = {"chat_template": chat_template} if chat_template else {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, chat_template_args=chat)
    tasks = TaskManager(include_defaults=False).load([task_config(suite)])
    out = evaluate(
        lm=lm, task_dict=tasks, log_samples=True, bootstrap_iters=0, apply_chat_template=bool(chat_template),
        verbosity="ERROR",
    )  # fmt: skip
    samples = sorted(out["samples"][f"suite_{suite.name}"], key=lambda s: s["doc_id"])
    return [float(s[suite.metric]) for s in samples]
