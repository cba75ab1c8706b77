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
from resources.mlflow_registry import logged

pytestmark = pytest.mark.integration

REQUIRED_PARAMS = {
    "data.rows_raw",
    "data.rows_valid",
    "data.rows_rejected",
    "data.train_rows",
    "data.eval_rows",
    "preset",
    "base_model",
    "train.sft.learning_rate",
    "train.sft.max_steps",
    "train.lora_r",
    "train.lora_alpha",
    "train.sft.per_device_train_batch_size",
    "train.dpo.beta",
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
    # two sample tickets in the second drop carry contact details: a warning on what trains
    assert checks_of(first) == {"train_eval_disjoint": True, "personal_data_scan": False, "promotion_gate": True}
    assert first.output_for_node("champion_model").version == "1"
    # same data, same seed: the new version only ties the champion, so the blocking gate fails and
    # champion_model does not run; the version is still registered
    assert not second.success and gate_only_failure(second.all_events)
    assert checks_of(second) == {"train_eval_disjoint": True, "personal_data_scan": False, "promotion_gate": False}
    assert "champion_model" not in {e.step_key for e in second.get_step_success_events()}
    assert second.output_for_node("registered_model").version == "2"
    champion = second.output_for_node("model_evaluation").champion
    assert not champion.rescored, "scored the same way when it was the candidate: its scores come from its run"
    assert champion.items == first.output_for_node("model_evaluation").items["tuned"], "per item (eval/items.json)"


def test_suites_and_the_judge_compare_the_candidate_with_base_and_champion(pipeline):
    first, second = pipeline["first"], pipeline["second"]
    key = "suite.general_knowledge.acc"
    evaluation = second.output_for_node("model_evaluation")
    assert evaluation.suites == {key: 1.0}
    assert {len(evaluation.model_items[m][key]) for m in ("base", "tuned", "champion")} == {32}
    assert evaluation.champion.items[key] == first.output_for_node("model_evaluation").items["tuned"][key]
    # the champion's answers come from its run's eval/samples.json: the samples show them, the judge reads them
    assert [s["champion"] for s in evaluation.samples] == [
        s["tuned"] for s in first.output_for_node("model_evaluation").samples
    ]
    assert set(evaluation.judge) == {"base", "champion"}
    assert all(len(v) == evaluation.eval_examples for v in evaluation.judge.values())
    criteria = {c.key: c for c in second.output_for_node("registered_model").gate.criteria}
    assert {"suite_general_knowledge_vs_base", "suite_general_knowledge_vs_champion"} <= set(criteria)
    assert "judge_vs_base" not in criteria, "the win rate is gated only when gate.min_judge_win_rate is set"
    assert criteria["suite_general_knowledge_vs_champion"].items == 32


def test_every_drop_is_ingested_once_with_its_checks(pipeline):
    instance = pipeline["instance"]
    drops = ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"]
    assert sorted(instance.get_materialized_partitions(dg.AssetKey("validated_records"))) == drops
    records = instance.fetch_materializations(dg.AssetKey("raw_records"), limit=100).records
    assert sorted(r.partition_key for r in records) == drops, "the second make run ingested nothing again"
    checks = {}
    for run in instance.get_runs(filters=dg.RunsFilter(job_name="ingest_drop")):
        drop = run.tags["dagster/partition"]
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = entry.dagster_event.event_specific_data
            checks[(drop, evaluation.asset_check_key.name)] = evaluation.passed
    assert len(checks) == 8, "two checks on each of the four drops, each evaluated once"
    assert all(checks.values())


def test_bad_sample_rows_are_rejected_with_their_reason(pipeline):
    drops = ("2026-01-05", "2026-01-12", "2026-01-19")
    rejected = pd.concat([stored(pipeline["settings"], "rejected_records", d).frame() for d in drops])
    reasons = dict(zip(rejected["source_file"] + ":" + rejected["source_line"].astype(str), rejected["reason"]))
    assert len(reasons) == 3
    assert reasons["2026-01-05/tickets.jsonl:18"] == "required field missing or blank: output"
    assert reasons["2026-01-05/tickets.jsonl:89"] == "required field missing or blank: instruction"
    assert reasons["2026-01-12/tickets.csv:101"] == "required field missing or blank: instruction"
    pairs = pipeline["first"].output_for_node("instruction_pairs").frame()
    # the ticket with a pasted log is cut to the smoke preset's 512 tokens, its answer whole
    (long,) = pairs[pairs["source_file"].eq("2026-01-19/tickets.jsonl") & pairs["source_line"].eq(72)].itertuples()
    assert long.n_tokens <= 512 and long.messages[-1]["content"].startswith('{"category"')
    assert stored(pipeline["settings"], "rejected_records", "2026-01-19").frame().empty
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
    assert (
        "vs champion v1" in challenger.tags["gate.reason"] and "needs lower bound >" in challenger.tags["gate.reason"]
    )
    assert "promoted_by" not in challenger.tags


def test_mlflow_run_carries_the_contract(pipeline):
    settings = pipeline["settings"]
    c = client(settings)
    version = c.get_model_version(settings.model_name, "1")
    run = c.get_run(version.run_id)
    assert set(run.data.params) >= REQUIRED_PARAMS
    assert run.data.params["preset"] == "smoke"
    params = run.data.params
    assert [params[f"data.rows_{k}"] for k in ("raw", "valid", "rejected", "excluded")] == ["436", "433", "3", "2"]
    assert (params["data.rows_truncated"], params["data.rows_left_out"]) == ("1", "0"), "the ticket with a long log"
    assert int(params["data.train_rows"]) + int(params["data.eval_rows"]) <= 395
    evaluation = pipeline["first"].output_for_node("model_evaluation")
    for side in ("base", "tuned"):  # logged as the UIs show figures (4 decimals)
        for metric, value in getattr(evaluation, side).items():
            assert run.data.metrics[f"{side}.{metric}"] == logged(value)
    assert set(evaluation.tuned) - set(evaluation.base) == {"judge_win_rate_vs_base"}, "the candidate's alone"
    assert {"exact_match", "json_valid", "field_accuracy", "eval_loss"} <= set(evaluation.tuned)
    assert run.data.tags["eval.primary_metric"] == "exact_match"
    assert params["eval.max_new_tokens"] == "24", "the smoke preset sets the budget"
    # Grouping is allowed by default, but the sample's random batches hold little padding: not grouped.
    assert params["train.sft.group_by_length"] == "False"
    assert {"base.generations_cut", "tuned.generations_cut"} <= set(run.data.metrics)
    assert version.tags["dagster.run_id"] == pipeline["first"].run_id
    assert version.tags["data.drops"] == "2026-01-05,2026-01-12,2026-01-19,2026-01-26"
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
    pairs = (
        pipeline["first"]
        .output_for_node("instruction_pairs")
        .frame(where=[("split", "=", "eval"), ("kind", "=", "sft")])
    )
    references = [c[-1]["content"] for c in pairs.sort_values("example_id")["messages"].head(3)]
    assert evaluation.max_new_tokens == generation_budget(tokenizer, references, 256)
    assert set(evaluation.generations_cut) >= {"base", "tuned"} and all(
        0 <= n <= 3 for n in evaluation.generations_cut.values()
    )
    assert [e.step_key for e in result.get_step_success_events()] == ["model_evaluation"]


def test_same_seed_data_and_config_train_the_same_curve_and_weights(pipeline):
    """The two runs of the fixture train the same setup from scratch (a finished training leaves no
    checkpoint to resume): the loss curves and the adapter weights are identical."""
    first, second = (pipeline[k].output_for_node("fine_tuned_model") for k in ("first", "second"))
    assert first.resumed_from_step is None and second.resumed_from_step is None
    assert first.loss_curve == second.loss_curve and len(first.loss_curve) == 3
    a, b = (load_file(f"{t.adapter_dir}/adapter_model.safetensors") for t in (first, second))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not list((pipeline["settings"].home / "checkpoints").glob("*/checkpoint-*")), "finished: none kept"


def test_the_version_points_at_the_run_its_training_reported_to(pipeline):
    settings = pipeline["settings"]
    trained = pipeline["first"].output_for_node("fine_tuned_model")
    version = client(settings).get_model_version(settings.model_name, "1")
    assert version.run_id == trained.mlflow_run_id
    run = client(settings).get_run(version.run_id)
    assert run.info.status == "FINISHED" and "train.learning_rate" in run.data.metrics
    assert "train.resumed_from_step" not in run.data.tags


def test_preference_pairs_train_dpo_on_the_sft_model_and_reach_evaluation_and_the_gate(pipeline):
    """The sample's preference drop: method auto becomes sft+dpo; DPO trains a new adapter on the
    merged SFT model; evaluation scores preference pairs; MLflow and the gate see them."""
    first, settings = pipeline["first"], pipeline["settings"]
    sft, candidate = first.output_for_node("fine_tuned_model"), first.output_for_node("preference_tuned_model")
    assert sft.method == candidate.method == "sft+dpo" and sft.preference is None
    assert candidate.adapter == "lora" and candidate.adapter_base_dir == sft.merged_dir
    assert candidate.adapter_dir != sft.adapter_dir and candidate.merged_dir != sft.merged_dir
    assert not candidate.adapter_applies_to(first.output_for_node("base_model")), "its adapter is on the SFT model"
    assert candidate.mlflow_run_id == sft.mlflow_run_id, "one MLflow run holds both stages"
    prefs = first.output_for_node("instruction_pairs").frame(where=[("kind", "=", "preference")])
    assert candidate.preference.pairs == int((prefs["split"] == "train").sum()) > 20
    assert candidate.preference.steps == 2 and candidate.preference.beta == 0.1, "the smoke preset's DPO"
    evaluation = first.output_for_node("model_evaluation")
    assert evaluation.method == "sft+dpo"
    assert evaluation.preference_pairs == min(6, int((prefs["split"] == "eval").sum())) > 0
    version = client(settings).get_model_version(settings.model_name, "1")
    run = client(settings).get_run(version.run_id)
    assert (run.data.params["train.method"], run.data.params["train.adapter"]) == ("sft+dpo", "lora")
    assert run.data.params["dpo.steps"] == "2" and version.tags["model.adapter_on"] == "sft_model"
    for who in ("base", "tuned"):
        assert 0 <= run.data.metrics[f"{who}.preference_accuracy"] <= 1
        assert run.data.metrics[f"{who}.preference_margin"] == logged(getattr(evaluation, who)["preference_margin"])
    assert [m.step for m in client(settings).get_metric_history(run.info.run_id, "dpo.loss")] == [1, 2]
    criteria = {c.criterion: c for c in first.output_for_node("registered_model").gate.criteria}
    preference = criteria["preference_accuracy vs base"]
    difference = evaluation.tuned["preference_accuracy"] - evaluation.base["preference_accuracy"]
    assert preference.value == pytest.approx(difference) and preference.low <= difference <= preference.high
    assert preference.threshold == "lower bound >= -1.0000" and preference.items == evaluation.preference_pairs
