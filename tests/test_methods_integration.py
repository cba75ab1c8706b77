"""The other paths through the graph, on the tiny Llama and the sample data: method `dpo` (no SFT;
a DPO adapter on the base model) becomes champion, then adapter `full` with method `sft` (no adapter
at all) is evaluated from its merged folder while the champion, scored with other settings, is
re-scored with its adapter on the loaded base."""

import pytest
from mlflow import MlflowClient

from tests.conftest import make_settings, run_all

pytestmark = pytest.mark.integration

LOWER_BAR = {"min_improvement": -1.0, "min_gain_over_champion": -1.0, "max_forgetting_pct": 1000.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("ft_methods")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, str(tiny_model_dir)).prepare()
    dpo = {"training": {"method": "dpo"}, "gate": {**LOWER_BAR, "min_preference_gain": -1.0}}
    _, instance, first, _ = run_all(settings, dpo)
    full = {
        "training": {"method": "sft", "adapter": "full", "sft": {"learning_rate": 1e-4}},
        "evaluation": {"max_eval_examples": 4},  # other settings: the champion is re-scored, not looked up
        "gate": LOWER_BAR,
    }
    _, _, second, _ = run_all(settings, full, instance)
    yield settings, first, second
    mp.undo()


def test_dpo_alone_skips_sft_and_trains_an_adapter_on_the_base(runs):
    settings, first, _ = runs
    assert first.success
    base = first.output_for_node("base_model")
    sft, candidate = first.output_for_node("fine_tuned_model"), first.output_for_node("preference_tuned_model")
    assert (sft.method, sft.steps, sft.adapter_dir, sft.merged_dir) == ("dpo", 0, None, base), "no SFT ran"
    assert candidate.method == "dpo" and candidate.adapter_applies_to(base) and candidate.preference.steps == 2
    materialization = first.asset_materializations_for_node("fine_tuned_model")[0]
    assert "no SFT" in materialization.metadata["skipped"].value
    evaluation = first.output_for_node("model_evaluation")
    assert evaluation.method == "dpo" and "preference_accuracy" in evaluation.tuned
    version = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_model_version(settings.model_name, "1")
    assert version.tags["model.adapter_on"] == "base_model" and version.tags["train.method"] == "dpo"
    assert first.output_for_node("champion_model").version == "1"


def test_full_fine_tuning_is_evaluated_from_its_merged_folder_and_rescores_the_champion(runs):
    settings, _, second = runs
    assert second.success
    candidate = second.output_for_node("preference_tuned_model")
    assert (candidate.method, candidate.adapter, candidate.adapter_dir, candidate.preference) == (
        "sft",
        "full",
        None,
        None,
    ), "sft: the SFT model handed on unchanged"
    metadata = second.asset_materializations_for_node("preference_tuned_model")[0].metadata
    assert (metadata["method"].value, metadata["second_stage"].value) == ("sft", "none: the SFT model, unchanged")
    evaluation = second.output_for_node("model_evaluation")
    assert evaluation.champion.version == "1" and evaluation.champion.rescored
    assert "preference_accuracy" in evaluation.champion.metrics
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = client.get_model_version(settings.model_name, "2")
    assert version.tags["model.adapter_on"] == "none" and version.tags["train.adapter"] == "full"
    assert "adapter" not in {a.path for a in client.list_artifacts(version.run_id)}
    assert [c.criterion for c in second.output_for_node("registered_model").gate.criteria][-1] != (
        "preference_accuracy vs base"
    ), "sft did not train on preferences"
