"""The promotion gate on real learning: the bundled SmolLM2, a good candidate and a bad one.

Two drops land one after the other and each run trains on the latest drop only (drops_window=1):
first clean tickets, which teach the task and take `champion`; then tickets whose training answers
were shuffled among themselves (their eval answers left intact, so they are scored fairly). The bad
candidate is registered as `challenger` and does not take `champion`. Its eval set differs from the
champion's, so the champion is re-scored on it: the comparison is like for like.
"""

import json
import random
import shutil

import pytest
from mlflow import MlflowClient

from assets.domain.chat import prompt_hash
from assets.domain.formats import to_example
from assets.instruction_pairs import split_of
from pipelines.run import gate_only_failure
from pipelines.settings import SAMPLE_LANDING
from resources.models import BUNDLED_BASE_MODEL
from tests.conftest import make_settings, run_all, seed_base_model

pytestmark = pytest.mark.e2e

# A short, real training run: enough steps for SmolLM2 to learn the ticket format. It raises the probe
# perplexity by about 9% (its interval over the probe texts reaching 11%, above the default 10% budget):
# the budget here leaves the verdict to the primary metric, which is what these candidates differ in.
QUICK_TRAINING = {
    "training": {"sft": {"max_steps": 40, "per_device_train_batch_size": 8, "learning_rate": 5e-4, "warmup_steps": 4}},
    "evaluation": {"max_new_tokens": 32, "batch_size": 16, "max_eval_examples": 0},
    "split": {"drops_window": 1},
    "gate": {"max_forgetting_pct": 20.0},
}


def shuffled_training_answers(rows: list[dict], eval_fraction: float = 0.15) -> list[dict]:
    """The rows with the answers of their train-split examples shuffled among themselves."""
    train = [r for r in rows if split_of(prompt_hash(to_example(r, "alpaca").messages), eval_fraction) == "train"]
    answers = [r["output"] for r in train]
    random.Random(7).shuffle(answers)
    for row, answer in zip(train, answers):
        row["output"] = answer
    return rows


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory, prepared_bundled_base):
    landing, home = tmp_path_factory.mktemp("landing"), tmp_path_factory.mktemp("ft_gate")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, BUNDLED_BASE_MODEL, landing=landing).prepare()
    seed_base_model(settings, prepared_bundled_base)

    shutil.copytree(SAMPLE_LANDING / "2026-01-05", landing / "2026-03-01")
    _, instance, good, _ = run_all(settings, QUICK_TRAINING)

    rows = [json.loads(line) for line in (SAMPLE_LANDING / "2026-01-19" / "tickets.jsonl").open()]
    (landing / "2026-03-02").mkdir()
    with (landing / "2026-03-02" / "tickets.jsonl").open("w") as out:
        out.writelines(json.dumps(r) + "\n" for r in shuffled_training_answers(rows))
    _, _, bad, _ = run_all(settings, QUICK_TRAINING, instance)
    yield settings, good, bad
    mp.undo()


def test_good_candidate_learns_and_takes_champion(gate_runs):
    settings, good, _ = gate_runs
    assert good.success
    evaluation = good.output_for_node("model_evaluation")
    assert evaluation.tuned["exact_match"] > evaluation.base["exact_match"] + 0.05
    vs_base = good.output_for_node("registered_model").gate.criteria[0]
    assert vs_base.criterion == "exact_match vs base" and vs_base.items == evaluation.eval_examples
    assert vs_base.low > 0.05, "the gain is shown by the interval, not only by the mean"
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"


def test_bad_candidate_stays_challenger_and_champion_does_not_move(gate_runs):
    settings, good, bad = gate_runs
    assert not bad.success and gate_only_failure(bad.all_events)
    evaluation = bad.output_for_node("model_evaluation")
    champion = evaluation.champion
    assert champion.version == "1" and champion.rescored, "other eval set: the champion is re-scored"
    assert evaluation.tuned["exact_match"] < champion.metrics["exact_match"]
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"
    challenger = client.get_model_version_by_alias(settings.model_name, "challenger")
    assert str(challenger.version) == "2"
    assert challenger.tags["gate.passed"] == "false" and "vs champion v1" in challenger.tags["gate.reason"]
    vs_champion = bad.output_for_node("registered_model").gate.criteria[1]
    assert vs_champion.criterion == "exact_match vs champion v1" and vs_champion.value < 0 and not vs_champion.passed
