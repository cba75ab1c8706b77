"""The real graph, materialized in-process: a tiny Llama, the bundled sample data, a temp FT_HOME.

Real Dagster runs, real Great Expectations, real TRL training, real MLflow registry on sqlite.
"""

import pickle

import dagster as dg
import pandas as pd
import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file
from transformers import AutoTokenizer

from assets.model_evaluation import generation_budget
from pipelines.presets import load_preset
from pipelines.run import gate_only_failure

pytestmark = pytest.mark.integration

REQUIRED_PARAMS = {
    "data.rows_raw",
    "data.rows_valid",
    "data.rows_rejected",
    "data.train_rows",
    "data.eval_rows",
    "preset",
    "base_model",
    "train.learning_rate",
    "train.max_steps",
    "train.lora_r",
    "train.lora_alpha",
    "train.per_device_train_batch_size",
    "train.max_length",
}


def stored(settings, asset: str, partition: str | None = None):
    """An asset's value as the filesystem IO manager stored it."""
    path = settings.home / "storage" / asset
    return pickle.loads((path / partition if partition else path).read_bytes())


def client(settings):
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def checks_of(result) -> dict[str, bool]:
    return {
        e.event_specific_data.asset_check_key.name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_first_run_promotes_and_second_is_stopped_by_the_gate(pipeline):
    first, second = pipeline["first"], pipeline["second"]
    assert first.success
    assert checks_of(first) == {"train_eval_disjoint": True, "promotion_gate": True}
    assert first.output_for_node("champion_model").version == "1"
    # same data, same seed: the new version only ties the champion, so the blocking gate fails and
    # champion_model does not run; the version is still registered
    assert not second.success and gate_only_failure(second)
    assert checks_of(second) == {"train_eval_disjoint": True, "promotion_gate": False}
    assert "champion_model" not in {e.step_key for e in second.get_step_success_events()}
    assert second.output_for_node("registered_model").version == "2"


def test_every_drop_is_ingested_once_with_its_checks(pipeline):
    instance = pipeline["instance"]
    drops = ["2026-01-05", "2026-01-12", "2026-01-19"]
    assert sorted(instance.get_materialized_partitions(dg.AssetKey("validated_records"))) == drops
    records = instance.fetch_materializations(dg.AssetKey("raw_records"), limit=100).records
    assert sorted(r.partition_key for r in records) == drops, "the second make run ingested nothing again"
    checks = {}
    for run in instance.get_runs(filters=dg.RunsFilter(job_name="ingest_drop")):
        drop = run.tags["dagster/partition"]
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = entry.dagster_event.event_specific_data
            checks[(drop, evaluation.asset_check_key.name)] = evaluation.passed
    assert len(checks) == 9, "three checks on each of the three drops, each evaluated once"
    assert all(passed for (drop, name), passed in checks.items() if name != "personal_data_scan")
    # two sample tickets in the second drop carry contact details: a warning there only
    assert [d for (d, name), passed in checks.items() if name == "personal_data_scan" and not passed] == ["2026-01-12"]


def test_bad_sample_rows_are_rejected_with_their_reason(pipeline):
    drops = ("2026-01-05", "2026-01-12", "2026-01-19")
    rejected = pd.concat([stored(pipeline["settings"], "rejected_records", d).frame() for d in drops])
    reasons = dict(zip(rejected["source_file"] + ":" + rejected["source_line"].astype(str), rejected["reason"]))
    assert len(reasons) == 4
    assert reasons["2026-01-05/tickets.jsonl:18"] == "required field missing or blank: output"
    assert reasons["2026-01-05/tickets.jsonl:89"] == "required field missing or blank: instruction"
    assert reasons["2026-01-12/tickets.csv:101"] == "required field missing or blank: instruction"
    assert reasons["2026-01-19/tickets.jsonl:72"].startswith("formatted example is longer than max_tokens=256")
    pairs = pipeline["first"].output_for_node("instruction_pairs").frame()
    excluded = pairs[pairs["split"] == "excluded"]
    assert dict(
        zip(excluded["source_file"] + ":" + excluded["source_line"].astype(str), excluded["excluded_reason"])
    ) == {
        "2026-01-12/tickets.csv:42": "duplicate of 2026-01-05/tickets.jsonl:6 from an earlier drop",
        "2026-01-19/tickets.jsonl:34": "duplicate of 2026-01-05/tickets.jsonl:61 from an earlier drop",
    }
    assert set(rejected["record"].iloc[0]) >= {"instruction", "output"}, "rejected rows keep their raw record"


def test_first_version_is_champion_and_second_only_challenger(pipeline):
    settings = pipeline["settings"]
    c = client(settings)
    champion = c.get_model_version_by_alias(settings.model_name, "champion")
    challenger = c.get_model_version_by_alias(settings.model_name, "challenger")
    assert str(champion.version) == "1" and str(challenger.version) == "2"
    assert champion.tags["gate.passed"] == "true" and champion.tags["promoted_by"].startswith("pipeline")
    assert challenger.tags["gate.passed"] == "false"
    assert "vs champion v1" in challenger.tags["gate.reason"] and "needs >" in challenger.tags["gate.reason"]
    assert "promoted_by" not in challenger.tags


def test_mlflow_run_carries_the_contract(pipeline):
    settings = pipeline["settings"]
    c = client(settings)
    version = c.get_model_version(settings.model_name, "1")
    run = c.get_run(version.run_id)
    assert set(run.data.params) >= REQUIRED_PARAMS
    assert run.data.params["preset"] == "smoke"
    params = run.data.params
    assert [params[f"data.rows_{k}"] for k in ("raw", "valid", "rejected", "excluded")] == ["400", "396", "4", "2"]
    assert int(params["data.train_rows"]) + int(params["data.eval_rows"]) <= 394
    evaluation = pipeline["first"].output_for_node("model_evaluation")
    for metric in evaluation.tuned:
        assert run.data.metrics[f"base.{metric}"] == pytest.approx(evaluation.base[metric])
        assert run.data.metrics[f"tuned.{metric}"] == pytest.approx(evaluation.tuned[metric])
    assert {"exact_match", "json_valid", "field_accuracy", "eval_loss"} <= set(evaluation.tuned)
    assert run.data.tags["eval.primary_metric"] == "exact_match"
    assert params["eval.max_new_tokens"] == "24", "the smoke preset sets the budget"
    assert {"base.generations_cut", "tuned.generations_cut"} <= set(run.data.metrics)
    assert version.tags["dagster.run_id"] == pipeline["first"].run_id
    assert version.tags["data.drops"] == "2026-01-05,2026-01-12,2026-01-19"
    assert len(version.tags["data.train_set_hash"]) == 16
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train.loss")] == [1, 2, 3]
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"adapter", "eval", "training"} <= artifacts


def test_training_changes_the_adapter_and_leaves_base_weights_alone(pipeline, tiny_model_dir):
    trained = pipeline["first"].output_for_node("fine_tuned_model")
    base_dir = pipeline["first"].output_for_node("base_model")
    original = load_file(tiny_model_dir / "model.safetensors")
    for name, tensor in load_file(f"{base_dir}/model.safetensors").items():
        assert (tensor == original[name]).all(), f"base weight {name} changed"
    adapter = load_file(f"{trained.adapter_dir}/adapter_model.safetensors")
    lora_b = [t for n, t in adapter.items() if "lora_B" in n]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "LoRA B starts at zero; training must move it"
    merged = load_file(f"{trained.merged_dir}/model.safetensors")
    changed = [n for n, t in merged.items() if n in original and not (t == original[n]).all()]
    assert any("q_proj" in n for n in changed)


SMOKE_EVALUATION = load_preset("smoke")["evaluation"]


def test_an_asset_rematerializes_alone_from_stored_upstream(pipeline):
    result = pipeline["job"].execute_in_process(
        instance=pipeline["instance"],
        asset_selection=[dg.AssetKey("model_evaluation")],
        # a run's own settings replace the stage's whole section, preset values included
        run_config={
            "resources": {
                "evaluation": {
                    "config": {**load_preset("smoke")["evaluation"], "max_eval_examples": 3, "max_new_tokens": 0}
                }
            }
        },
    )
    assert result.success
    evaluation = result.output_for_node("model_evaluation")
    assert evaluation.eval_examples == 3
    # max_new_tokens 0: the budget comes from the three reference answers' token lengths
    tokenizer = AutoTokenizer.from_pretrained(pipeline["first"].output_for_node("base_model"))
    pairs = pipeline["first"].output_for_node("instruction_pairs").frame(where=[("split", "=", "eval")])
    references = [c[-1]["content"] for c in pairs.sort_values("example_id")["messages"].head(3)]
    assert evaluation.max_new_tokens == generation_budget(tokenizer, references, 256)
    assert set(evaluation.generations_cut) >= {"base", "tuned"} and all(
        0 <= n <= 3 for n in evaluation.generations_cut.values()
    )
    assert [e.step_key for e in result.get_step_success_events()] == ["model_evaluation"]
