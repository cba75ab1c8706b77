"""Benchmark: a retrain that continues from the champion (warm start, with and without replay) beside
a retrain from the base, on Dolly cut into two dated drops.

    make bench-warm      (or: .venv/bin/python -m tests.bench.warm_start)

Dolly (../shared/data/dolly/, required) is cut by category into two drops a user might land weeks
apart: the first holds open and general QA, classification and brainstorming, the second closed QA,
information extraction, summarization and creative writing. 32 rows of each are held out. The
champion is the SFT recipe (`assets/recipes/sft.py`, cpu preset settings) trained from the bundled
SmolLM2-135M on the first drop. Then the second drop lands, and three retrains of the same number of
steps run, each with the cpu preset's settings, its eval loss on both drops' held-out rows measured
every few steps (the answer's tokens, `model_evaluation.eval_loss`):

- `from base`: what `start_from: base` does: a new adapter on the base, on both drops' rows;
- `warm, replay 0.25`: `start_from: champion`: the champion's adapter trained on, on the new drop's
  rows plus a quarter replayed from the first (`assets.domain.warm_start.with_replay`);
- `warm, no replay`: the same with `replay_fraction: 0`.

Prints per retrain its curve, its train seconds (evaluation not counted), and for the warm starts the
step and seconds at which their combined eval loss first reached the from-base retrain's final one.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from tests.bench.train import DOLLY, MAX_LENGTH, prepared_base, training_settings

FIRST_DROP = {"open_qa", "general_qa", "classification", "brainstorming"}
HELD_OUT = 32


def drops(base: str) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """Dolly's rows of at most MAX_LENGTH tokens as train rows of two drops, and each drop's held-out rows."""
    import random

    from transformers import AutoTokenizer

    from assets.domain.chat import DEFAULT_SYSTEM_PROMPT, training_chat_template, training_tokens, with_system

    tokenizer = AutoTokenizer.from_pretrained(base)
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    rows = []
    for i, r in enumerate(json.loads(line) for line in DOLLY.open()):
        prompt = r["instruction"] + (f"\n\n{r['context']}" if r.get("context") else "")
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["response"]}]
        messages = with_system(turns, DEFAULT_SYSTEM_PROMPT)
        tokens = training_tokens(tokenizer, messages, None, template)
        if len(tokens["input_ids"]) <= MAX_LENGTH:
            drop = "2026-01-05" if r["category"] in FIRST_DROP else "2026-02-02"
            rows.append({"example_id": f"dolly-{i}", "drop": drop, "messages": messages, "tools": None,
                         "n_tokens": len(tokens["input_ids"]), **tokens})  # fmt: skip
    random.Random(0).shuffle(rows)
    frame = pd.DataFrame(rows)
    held, train = {}, []
    for drop, part in frame.groupby("drop"):
        held[drop] = part.iloc[:HELD_OUT][["input_ids", "assistant_masks"]].to_dict("records")
        train.append(part.iloc[HELD_OUT:])
    return pd.concat(train, ignore_index=True), held


def eval_curve(held: dict[str, list[dict]], every: int):
    """A callback measuring the eval loss on each drop's held-out rows every `every` steps (and before
    the first), and the train seconds so far without the evaluations."""
    from transformers import TrainerCallback

    from assets.model_evaluation import eval_loss

    class Curve(TrainerCallback):
        points: list[dict] = []
        started = None
        evaluating = 0.0

        def measure(self, model, tokenizer, step):
            began = time.perf_counter()
            model.eval()
            losses = {drop: eval_loss(model, tokenizer, rows, 16, 4096) for drop, rows in held.items()}
            model.train()
            seconds = began - self.started - self.evaluating
            self.points.append({"step": step, "seconds": round(seconds, 1), **losses})
            self.evaluating += time.perf_counter() - began

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.points, self.started, self.evaluating = [], time.perf_counter(), 0.0
            self.measure(model, processing_class, state.global_step)

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.global_step % every == 0:
                self.measure(model, processing_class, state.global_step)

    return Curve()


def retrain(name: str, base: str, rows: pd.DataFrame, steps: int, batch: int, held, every: int,
            adapter: str | None = None) -> dict:  # fmt: skip
    """One training by the SFT recipe's own `train` (cpu preset settings, `steps` steps of `batch`), from the
    base or with the champion's `adapter` trained on; returns its curve and where it saved its adapter."""
    from assets.recipes.sft import train as train_sft
    from resources.models import ModelLoader

    settings = training_settings(steps, batch)
    curve, folder = eval_curve(held, every), Path(tempfile.mkdtemp(prefix="warm-"))
    columns = ["example_id", "drop", "messages", "tools", "n_tokens"]
    run = train_sft(settings, base, rows[columns].reset_index(drop=True), ModelLoader(), folder, None, curve, adapter)
    run.trainer.model.save_pretrained(folder / "adapter")
    points = curve.points
    print(f"{name}: {len(rows)} rows, {steps} steps, curve:", flush=True)
    for p in points:
        print("  " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()))
    return {"name": name, "rows": len(rows), "points": points, "adapter": str(folder / "adapter")}


def combined(point: dict, held: dict[str, list[dict]]) -> float:
    """The eval loss over both drops' held-out rows (each drop's mean, weighted by its rows)."""
    total = sum(len(rows) for rows in held.values())
    return sum(point[drop] * len(rows) / total for drop, rows in held.items())


def summary(results: list[dict], held, target: float | None = None) -> None:
    first, second = sorted(held)
    target = target if target is not None else combined(results[0]["points"][-1], held)
    print(f"\nfrom-base final combined eval loss (the target): {target:.4f}")
    columns = ["retrain", "rows", "final eval loss, old drop", "new drop", "both", "reached the target at step",
               "train s then", "train s in all"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    for r in results:
        last = r["points"][-1]
        hit = next((p for p in r["points"] if combined(p, held) <= target), None)
        reached = f"{hit['step']} | {hit['seconds']}" if hit else "not reached | -"
        print(f"| {r['name']} | {r['rows']} | {last[first]:.4f} | {last[second]:.4f} | {combined(last, held):.4f} "
              f"| {reached} | {last['seconds']} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--champion-steps", type=int, default=30, help="steps of the champion on the first drop")
    parser.add_argument("--steps", type=int, default=40, help="steps of each retrain")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--every", type=int, default=5, help="eval loss every N steps")
    parser.add_argument("--replay", type=float, default=0.25)
    parser.add_argument("--champion-adapter", help="a champion adapter an earlier run saved: not trained again")
    parser.add_argument("--target", type=float, help="the from-base retrain's final combined eval loss, measured "
                        "by an earlier run: the from-base retrain is not run again")  # fmt: skip
    args = parser.parse_args()
    if not DOLLY.is_file():
        raise SystemExit(f"{DOLLY} is missing: this bench measures on Dolly (../shared/data/README.md).")
    from assets.domain.warm_start import with_replay

    with tempfile.TemporaryDirectory() as tmp:
        base = prepared_base(Path(tmp) / "base")
        train, held = drops(base)
        first = sorted(held)[0]
        print(f"train rows per drop: {train['drop'].value_counts().sort_index().to_dict()}, held out {HELD_OUT} each")
        old = train[train["drop"].eq(first)]
        adapter = (
            args.champion_adapter
            or retrain("champion (first drop)", base, old, args.champion_steps, args.batch, held, args.every)["adapter"]
        )
        replayed, counts = with_replay(train, (first,), args.replay, seed=0)
        print(f"replay: new, replayed, old rows = {counts}")
        results = [] if args.target is not None else [
            retrain("from base", base, train.sample(frac=1, random_state=0), args.steps, args.batch, held, args.every)
        ]  # fmt: skip
        results += [
            retrain(
                f"warm, replay {args.replay}",
                base,
                replayed.sample(frac=1, random_state=0),
                args.steps,
                args.batch,
                held,
                args.every,
                adapter,
            ),  # fmt: skip
            retrain(
                "warm, no replay",
                base,
                train[~train["drop"].eq(first)],
                args.steps,
                args.batch,
                held,
                args.every,
                adapter,
            ),  # fmt: skip
        ]
        summary(results, held, args.target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
