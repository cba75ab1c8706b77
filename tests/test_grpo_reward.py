"""GRPO raises the mean reward on the sample tickets: the bundled SmolLM2 given a few SFT steps, then GRPO
rewarded as evaluation scores JSON answers (exact match, JSON validity, field accuracy), through the real
training assets and their jobs.

Answers may have 16 tokens (the smoke preset's GRPO budget), fewer than most ticket answers need: at
first nearly every answer is cut before its JSON closes and scores 0, and GRPO teaches the model to
answer in JSON that fits (measured: mean reward 0.0 at step 1, about 1.1 from step 3 on; BENCHMARKS.md,
which also has the run with the auto budget). Four tickets, each answered four times at every step:
every step's reward is the mean over the same prompts, so the curve moves with what the model learnt,
not with which prompts a step drew. About three minutes on 2 cores.
"""

import json

import dagster as dg
import pytest

from assets.domain.values import PairsSummary
from assets.fine_tuned_model import fine_tuned_model
from assets.instruction_pairs import PAIRS_SCHEMA
from assets.preference_tuned_model import preference_tuned_model
from pipelines.definitions import build_resources
from pipelines.settings import SAMPLE_LANDING
from resources.models import BUNDLED_BASE_MODEL, ModelLoader
from resources.records import RecordWriter
from tests.conftest import make_settings

pytestmark = pytest.mark.e2e

TICKETS = 4
STEPS = 8
SETTINGS = {
    "method": "sft+grpo",
    "precision": "fp32",
    "logging_steps": 1,
    "save_steps": 0,
    # A few SFT steps: the model answers in JSON, not yet right (the reward has room to rise).
    "sft": {"max_steps": 5, "per_device_train_batch_size": 8, "learning_rate": 5e-4, "warmup_steps": 0},
    # The task's rewards (exact_match, json_valid, field_accuracy); no KL penalty (TRL's default: no
    # reference pass, a third less time a step).
    "grpo": {
        "max_steps": STEPS,
        "per_device_train_batch_size": 4 * TICKETS,
        "num_generations": 4,
        "max_completion_length": 16,
        "learning_rate": 1e-3,
        "beta": 0.0,
    },
    "lr_scheduler_type": "constant",
}


def sample_tickets() -> list[list[dict]]:
    lines = (SAMPLE_LANDING / "2026-01-05" / "tickets.jsonl").read_text().splitlines()[:TICKETS]
    rows = [json.loads(line) for line in lines]
    return [
        [
            {"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"},
            {"role": "assistant", "content": r["output"]},
        ]
        for r in rows
    ]


def pairs_asset(folder) -> dg.AssetsDefinition:
    rows = [
        {"example_id": str(i), "kind": "sft", "messages": m, "split": "train", "n_tokens": 160}
        for i, m in enumerate(sample_tickets())
    ]
    with RecordWriter(folder / "pairs.parquet", PAIRS_SCHEMA, ("tools",)) as out:
        out.write([{f.name: row.get(f.name) for f in PAIRS_SCHEMA} for row in rows])
    records = out.record_set(summary=PairsSummary(len(rows), 0, 0, 0, ("2026-01-05",), {}, "tickets", "none"))

    @dg.asset(name="instruction_pairs")
    def pairs():
        return records

    return pairs


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundled") / "model"
    ModelLoader(base_model=BUNDLED_BASE_MODEL).materialize_base(folder)
    return folder


def train(home, base, settings) -> dg.ExecuteInProcessResult:
    @dg.asset(name="base_model")
    def base_model():
        return str(base)

    resources = build_resources(make_settings(home, str(base)).prepare(), {"training": settings})
    assets = [base_model, pairs_asset(home), fine_tuned_model, preference_tuned_model]
    return dg.materialize(assets, resources=resources, raise_on_error=False)


def test_grpo_raises_the_mean_reward_on_the_sample_tickets(bundled, tmp_path):
    result = train(tmp_path, bundled, SETTINGS)
    assert result.success, [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
    stage = result.output_for_node("preference_tuned_model").reinforcement
    rewards = [reward for _, reward in stage.reward_curve]
    assert len(rewards) == STEPS and stage.rewards == ("exact_match", "json_valid", "field_accuracy")
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, rewards
    (materialization,) = result.asset_materializations_for_node("preference_tuned_model")
    metadata = materialization.metadata
    assert metadata["grpo_first_reward"].value < metadata["grpo_last_reward"].value
    assert "note" not in metadata, "answers scored apart: there was something to learn"
