"""What the regression suite and the judge cost and tell, on the bundled SmolLM2 (BENCHMARKS.md):

- the shipped general-knowledge suite (32 questions, 4 choices) through lm-evaluation-harness: seconds
  per model with the chat template training renders with and as plain text, and the accuracy of each;
- the bundled SmolLM2 as a local judge on clear-cut comparisons (the right choice against a wrong one,
  the reference shown or not), both orders: its win rate for the right answer and how often it says A.

    python -m tests.bench.eval_extras [--base-model FOLDER]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from assets.domain.chat import training_chat_template
from assets.domain.evaluation import GENERAL_KNOWLEDGE
from resources.benchmark_suites import MULTIPLE_CHOICE, Suite, score_suite
from resources.judge import Comparison, LocalJudge, pairwise_scores
from resources.models import BUNDLED_BASE_MODEL, ModelLoader


def prepared_base(folder: str | None) -> str:
    """A prepared SmolLM2 folder: the one given, or the bundled GGUF converted into a temporary one."""
    if folder:
        return folder
    target = Path(tempfile.mkdtemp(prefix="smollm2-")) / "model"
    ModelLoader(base_model=BUNDLED_BASE_MODEL).materialize_base(target)
    return str(target)


def suite_timings(model, tokenizer, template: str) -> None:
    suite = Suite("general_knowledge", str(GENERAL_KNOWLEDGE), MULTIPLE_CHOICE, "acc")
    for name, chat in (("chat template", template), ("plain text", None)):
        score_suite(model, tokenizer, suite, chat, 16)  # warm-up: the harness's first call builds its task
        started = time.perf_counter()
        scores = score_suite(model, tokenizer, suite, chat, 16)
        print(f"suite, {name}: {time.perf_counter() - started:.1f} s, acc {sum(scores) / len(scores):.3f}")


def judge_agreement(model, tokenizer) -> None:
    questions = [json.loads(line) for line in GENERAL_KNOWLEDGE.open()]
    judge = LocalJudge(model, tokenizer, 8)
    right = [
        Comparison(q["question"], q["choices"][q["answer"]], q["choices"][q["answer"]],
                   q["choices"][(q["answer"] + 1) % len(q["choices"])])
        for q in questions
    ]  # fmt: skip
    for name, comparisons in (("reference shown", right), ("no reference", [
        Comparison(c.prompt, "", c.first, c.second) for c in right
    ])):  # fmt: skip
        started = time.perf_counter()
        scores = pairwise_scores(judge, comparisons)
        first_order = judge(comparisons)
        print(
            f"judge, {name}: right answer's win rate {sum(scores) / len(scores):.3f} "
            f"(won both orders {scores.count(1.0)}, split {scores.count(0.5)}, lost both {scores.count(0.0)} "
            f"of {len(scores)}); says A {first_order.count('A') / len(first_order):.0%}; "
            f"{time.perf_counter() - started:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", help="a prepared SmolLM2 folder (default: convert the bundled GGUF)")
    args = parser.parse_args()
    folder = prepared_base(args.base_model)
    loader = ModelLoader()
    tokenizer, model = loader.load_tokenizer(folder), loader.load_model(folder).eval()
    suite_timings(model, tokenizer, training_chat_template(tokenizer) or tokenizer.chat_template)
    judge_agreement(model, tokenizer)


if __name__ == "__main__":
    main()
