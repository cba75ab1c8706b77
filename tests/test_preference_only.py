"""A landing of nothing but a few preference pairs (a hosted fine-tuning service's DPO file), through
the real job on the tiny Llama: the pairs are split by their prompt's hash with one held out for
evaluation, method auto trains SFT on the chosen replies and DPO on the pairs, and the version is
evaluated on the held-out pair and registered."""

import json

import pytest

from tests.conftest import make_settings, run_all

pytestmark = pytest.mark.integration

SYSTEM = "You answer support tickets with one JSON object: category, priority, product."
TICKETS = [
    ("My RouterX drops Wi-Fi every hour.", "network", "high", "RouterX"),
    ("CloudDrive will not sync my photos.", "sync", "medium", "CloudDrive"),
    ("The invoice for March is missing.", "billing", "low", "Billing"),
]


def hosted_pair(ticket: str, category: str, priority: str, product: str) -> dict:
    right = json.dumps({"category": category, "priority": priority, "product": product})
    wrong = json.dumps({"category": category, "priority": "low" if priority != "low" else "high", "product": product})
    return {
        "input": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}]},
        "preferred_output": [{"role": "assistant", "content": right}],
        "non_preferred_output": [{"role": "assistant", "content": wrong}],
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    landing = tmp_path_factory.mktemp("landing")
    (landing / "2026-05-01").mkdir()
    (landing / "2026-05-01" / "dpo.jsonl").write_text("".join(json.dumps(hosted_pair(*t)) + "\n" for t in TICKETS))
    home = tmp_path_factory.mktemp("ft_pairs")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, str(tiny_model_dir), landing=landing).prepare()
    lower_bar = {"gate": {"min_improvement": -1.0, "max_forgetting_pct": 1000.0, "min_preference_gain": -1.0}}
    _, instance, result, problems = run_all(settings, lower_bar)
    yield result, instance, problems
    mp.undo()


def test_three_pairs_train_by_the_preference_method_and_are_evaluated(run):
    result, _, problems = run
    assert result.success, problems
    pairs = result.output_for_node("instruction_pairs")
    frame = pairs.frame()
    assert set(frame["kind"]) == {"preference"} and sorted(frame["split"]) == ["eval", "train", "train"]
    sft = result.output_for_node("fine_tuned_model")
    assert (sft.method, sft.train_examples) == ("sft+dpo", 2), "SFT on the two train pairs' chosen replies"
    candidate = result.output_for_node("preference_tuned_model")
    assert candidate.method == "sft+dpo" and candidate.preference.pairs == 2
    evaluation = result.output_for_node("model_evaluation")
    assert (evaluation.eval_examples, evaluation.preference_pairs) == (1, 1), "the held-out pair"
    assert "preference_accuracy" in evaluation.tuned
    assert result.output_for_node("registered_model").version == "1"


def test_the_split_says_it_was_evened(run):
    result, _, _ = run
    metadata = result.asset_materializations_for_node("instruction_pairs")[0].metadata
    assert metadata["split_note"].value.startswith("the prompt hash put every example in train")
    assert (metadata["preference_pairs_train"].value, metadata["preference_pairs_eval"].value) == (2, 1)
    assert metadata["train_rows"].value == 0 and metadata["preference_pairs"].value == 3
