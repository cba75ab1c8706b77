"""GRPO on the sample tickets, measured: the bundled SmolLM2 given a few SFT steps, then GRPO rewarded as
evaluation scores JSON answers (exact match, JSON validity, field accuracy), through the real training
assets and their jobs; and GRPO from the base model alone, where every answer scores 0 (it answers in
prose, not JSON) and the stage should say it had nothing to learn from.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/bench/grpo_reward.py

Not yet part of `make test`: on a 2-core machine shared with other work its 16 GRPO steps took over
20 minutes (BENCHMARKS.md, GRPO), and its first figures are not yet measured on a quiet machine.
Settings from the exploration recorded there (5 SFT steps, then lr 1e-3 on 8 tickets).
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

# Eight tickets: GRPO takes 2 a step (4 answers each), so each is drawn four times in 16 steps.
TICKETS = 8
SETTINGS = {
    "method": "sft+grpo",
    "precision": "fp32",
    "logging_steps": 1,
    "save_steps": 0,
    # A few SFT steps: the model answers in JSON, not yet right (the reward has room to rise).
    "sft": {"max_steps": 5, "per_device_train_batch_size": 8, "learning_rate": 5e-4, "warmup_steps": 0},
    "grpo": {
        "max_steps": 16,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 32,
        "learning_rate": 1e-3,
    },
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
    assert len(rewards) == 16 and stage.rewards == ("exact_match", "json_valid", "field_accuracy")
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.1, rewards
    assert stage.kl is not None and stage.kl > 0, "the KL to where it started is tracked (beta 0.04)"


def test_grpo_from_a_base_that_never_answers_in_json_says_it_had_nothing_to_learn(bundled, tmp_path):
    settings = {**SETTINGS, "method": "grpo", "grpo": {**SETTINGS["grpo"], "max_steps": 2}}
    result = train(tmp_path, bundled, settings)
    assert result.success, [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
    (materialization,) = result.asset_materializations_for_node("preference_tuned_model")
    assert "GRPO had nothing to learn from" in materialization.metadata["note"].value
    assert "method sft+grpo" in materialization.metadata["note"].value
