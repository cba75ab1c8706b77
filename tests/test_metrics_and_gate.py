from dataclasses import replace

import pytest

from assets.domain.lineage import DataCounts, RunLineage, model_card
from assets.domain.metrics import comparison_rows, extract_answer, mean_scores, metrics_table, score_answer, task_type
from assets.domain.values import (
    ChampionScores,
    Evaluation,
    GateVerdict,
    PairsSummary,
    PreferenceStage,
    TrainedModel,
)
from assets.model_evaluation import generation_budget
from data_checks.promotion_gate import GateConfig, gate_verdict
from resources.mlflow_registry import is_transient

EXPECTED = '{"category": "billing", "priority": "high", "product": "CloudDrive"}'


def json_scores(prediction, expected=EXPECTED):
    scores = score_answer(prediction, expected, "json")
    return {k: scores[k] for k in ("exact_match", "json_valid", "field_accuracy")}


def test_json_answers_compare_by_value_not_by_spacing_or_key_order():
    same = '{"product":"CloudDrive","priority":"high","category":"billing"}'
    assert json_scores(same) == {"exact_match": 1.0, "json_valid": 1.0, "field_accuracy": 1.0}


def test_partly_right_json_earns_field_accuracy_only():
    wrong = '{"category": "billing", "priority": "low", "product": "CloudDrive"}'
    scores = json_scores(wrong)
    assert scores["exact_match"] == 0.0 and scores["json_valid"] == 1.0
    assert scores["field_accuracy"] == pytest.approx(2 / 3)


def test_invalid_json_scores_zero_everywhere():
    assert json_scores("The category is billing.") == {
        "exact_match": 0.0,
        "json_valid": 0.0,
        "field_accuracy": 0.0,
    }


def test_plain_text_answers_get_normalized_exact_match_and_library_text_metrics():
    assert score_answer("  Paris ", "paris")["exact_match"] == 1.0
    lyon = score_answer("Lyon", "Paris")
    assert lyon == {"exact_match": 0.0, "rougeL": 0.0, "token_f1": 0.0, "chrf": lyon["chrf"]} and lyon["chrf"] < 0.2
    partial = score_answer("the capital is Paris", "Paris is the capital of France")
    assert partial["token_f1"] == pytest.approx(2 * (4 / 4) * (4 / 6) / (4 / 4 + 4 / 6))  # 4 of 4 / 6 words shared
    assert 0 < partial["rougeL"] < partial["token_f1"]
    assert score_answer("Paris is the capital of France", "Paris is the capital of France")["chrf"] == 1.0


def test_task_type_and_mean_scores():
    assert task_type([EXPECTED, "[1, 2]"]) == "json" and task_type([EXPECTED, "Paris"]) == "open_ended"
    means = mean_scores([json_scores(EXPECTED), json_scores("nope")])
    assert means == {"exact_match": 0.5, "field_accuracy": 0.5, "json_valid": 0.5}


def test_metrics_table_marks_the_primary_metric():
    table = metrics_table({"exact_match": 0.1, "eval_loss": 2.0}, {"exact_match": 0.9, "eval_loss": 0.5}, "exact_match")
    assert "| exact_match (primary) | 0.1000 | 0.9000 | +0.8000 |" in table


def test_metrics_table_shows_the_comparison_rows_in_their_order_rounding_and_columns():
    base, tuned = {"a_loss": 2.0, "rougeL": 0.123456}, {"a_loss": 1.0, "rougeL": 0.5, "zeta": 0.25}
    rows = comparison_rows(base, tuned, "rougeL", {"rougeL": 0.4})
    lines = metrics_table(base, tuned, "rougeL", {"rougeL": 0.4}).splitlines()
    assert [line.split(" | ")[0].strip("| ") for line in lines[2:]] == ["rougeL (primary)", "a_loss", "zeta"]
    assert [row["metric"] for row in rows] == ["rougeL", "a_loss", "zeta"], "primary first, then by name"
    assert lines[2] == "| rougeL (primary) | 0.1235 | 0.5000 | +0.3765 | 0.4000 |", "rounded as the rows are"
    assert lines[4] == "| zeta | - | 0.2500 | - | - |", "a metric the base or champion lacks shows as -"
    assert "champion" in metrics_table(base, tuned, "rougeL", {})
    assert "champion" in rows[0] and "champion" not in comparison_rows(base, tuned, "rougeL")[0]
    assert "champion" not in metrics_table(base, tuned, "rougeL"), "no champion, no column, in both"


def evaluation(base=0.1, tuned=0.8, champion=None, forgetting=2.0, task="json", **metrics):
    return Evaluation(
        primary_metric="exact_match",
        task_type=task,
        base={"exact_match": base, **{k: b for k, (b, _) in metrics.items()}},
        tuned={"exact_match": tuned, **{k: t for k, (_, t) in metrics.items()}},
        champion=None if champion is None else ChampionScores("3", False, {"exact_match": champion}),
        forgetting_pct=forgetting,
        eval_examples=10,
        eval_set_hash="abc",
        settings_hash="def",
    )


@pytest.mark.parametrize(
    ("kwargs", "gate", "passed", "phrase"),
    [
        ({}, {}, True, "exact_match vs base: 0.8000 (> 0.1000 + 0.05)"),
        ({"champion": 0.7}, {}, True, "exact_match vs champion v3: 0.8000 (> 0.7000 + 0.0)"),
        ({"champion": 0.8}, {}, False, "exact_match vs champion v3: 0.8000, needs > 0.8000 + 0.0"),
        ({"champion": 0.9}, {}, False, "vs champion v3"),
        ({"champion": 0.75}, {"min_gain_over_champion": 0.1}, False, "needs > 0.7500 + 0.1"),
        ({"base": 0.5, "tuned": 0.52}, {}, False, "exact_match vs base: 0.5200, needs > 0.5000 + 0.05"),
        ({"base": 0.5, "tuned": 0.52, "task": "open_ended"}, {}, True, "+ 0.01"),
        ({"base": 0.0, "tuned": 0.0}, {"min_improvement": -1.0}, True, "vs base"),
        ({"forgetting": 12.5}, {}, False, "probe perplexity change %: 12.5000, needs <= 10.0"),
        ({"forgetting": 12.5}, {"max_forgetting_pct": 15}, True, "probe perplexity"),
    ],
)
def test_gate_checks_base_champion_and_forgetting(kwargs, gate, passed, phrase):
    verdict = gate_verdict(evaluation(**kwargs), GateConfig(**gate))
    assert verdict.passed is passed
    assert phrase in verdict.reason
    assert [c.passed for c in verdict.criteria if not c.passed] == ([] if passed else [False])


@pytest.mark.parametrize(
    ("method", "accuracy", "gain", "passed", "phrase"),
    [
        ("sft+dpo", (0.5, 0.8), 0.0, True, "preference_accuracy vs base: 0.8000 (>= 0.5000 + 0.0)"),
        ("dpo", (0.5, 0.5), 0.0, True, "preference_accuracy vs base: 0.5000 (>= 0.5000 + 0.0)"),
        ("sft+dpo", (0.6, 0.4), 0.0, False, "preference_accuracy vs base: 0.4000, needs >= 0.6000 + 0.0"),
        ("sft+dpo", (0.5, 0.6), 0.2, False, "needs >= 0.5000 + 0.2"),
        ("sft", (0.6, 0.4), 0.0, True, None),
    ],
)
def test_gate_holds_a_preference_trained_version_to_the_base_preference_accuracy(
    method, accuracy, gain, passed, phrase
):
    scored = replace(evaluation(preference_accuracy=accuracy), method=method, preference_pairs=6)
    verdict = gate_verdict(scored, GateConfig(min_preference_gain=gain))
    assert verdict.passed is passed
    names = [c.criterion for c in verdict.criteria]
    if phrase is None:
        assert "preference_accuracy vs base" not in names, "a version not trained on preferences is not held to it"
    else:
        assert phrase in verdict.reason and names[-1] == "preference_accuracy vs base"


def test_no_held_out_pairs_means_no_preference_criterion():
    verdict = gate_verdict(replace(evaluation(), method="sft+dpo"), GateConfig())
    assert verdict.passed and "preference" not in verdict.reason


PASSED = GateVerdict(True, "beats base", ())


def lineage(gate=PASSED) -> RunLineage:
    pairs = PairsSummary(
        train_rows=80, eval_rows=10, preference_pairs=0, excluded_duplicates=0, drops=("d1", "d2"),
        validations={"d1": ["/gx/results/d1-run/records.json"]}, train_set_hash="h", eval_set_hash="e",
    )  # fmt: skip
    trained = TrainedModel(
        adapter_dir="/a", merged_dir="/m", loss_curve_png="/l.png", preset="cpu", settings={"sft.max_steps": 50},
        device="cpu", max_length=128, train_examples=80, steps=50, train_loss=0.5, train_seconds=60.0,
    )  # fmt: skip
    return RunLineage(
        model_name="m",
        dagster_run_id="run-1",
        base_model="/models/base",
        data=DataCounts.of(pairs, rows_raw=100, rows_valid=95, rows_rejected=5),
        trained=trained,
        evaluation=evaluation(eval_loss=(2.0, 0.5)),
        gate=gate,
    )


def test_model_card_shows_data_metrics_use_and_limits():
    card = model_card(lineage(), "v1")
    for heading in ("## Data", "## Evaluation", "## Intended use", "## Limits"):
        assert heading in card
    assert "| exact_match (primary) | 0.1000 | 0.8000 | +0.7000 |" in card
    assert "100 raw, 95 valid, 5 rejected" in card and "Gate: **passed**" in card


def test_every_view_of_a_run_states_the_same_facts():
    record = lineage(GateVerdict(False, "vs champion v3: too low", ()))
    params, tags = record.mlflow_params(), record.version_tags()
    assert params["data.drops"] == tags["data.drops"] == "d1,d2"
    assert params["data.train_set_hash"] == tags["data.train_set_hash"] == "h"
    assert params["data.eval_set_hash"] == tags["data.eval_set_hash"] == "abc", "the evaluation's hash"
    assert (params["preset"], params["train.sft.max_steps"], params["data.eval_rows"]) == ("cpu", "50", "10")
    assert tags["gate.passed"] == record.gate_tags()["gate.passed"] == "false"
    assert tags["eval.exact_match"] == "0.8000" and tags["eval.settings_hash"] == "def"
    assert tags["data.validations"] == '{"d1": ["results/d1-run/records.json"]}'
    assert record.mlflow_metrics()["tuned.eval_loss"] == 0.5 and record.mlflow_metrics()["train.seconds"] == 60.0
    metadata = record.dagster_metadata("7", "mlflow-run")
    assert metadata["version"] == 7 and metadata["model_uri"] == "models:/m/7" and not metadata["gate_passed"]
    assert "Gate: **not passed** (vs champion v3: too low)" in model_card(record, "v7")


def test_a_preference_trained_version_states_its_method_adapter_and_dpo_stage():
    record = lineage()
    stage = PreferenceStage(pairs=30, steps=8, beta=0.1, learning_rate=1e-4, train_loss=0.6, train_seconds=30.0,
                            reward_accuracy=0.75, loss_curve=((1, 0.69), (8, 0.5)))  # fmt: skip
    trained = replace(
        record.trained, method="sft+dpo", adapter="dora", adapter_base_dir="/sft/merged", preference=stage
    )
    record = replace(
        record, trained=trained, evaluation=replace(record.evaluation, method="sft+dpo", preference_pairs=5)
    )
    params, tags, metrics = record.mlflow_params(), record.version_tags(), record.mlflow_metrics()
    assert (params["train.method"], params["train.adapter"]) == (tags["train.method"], tags["train.adapter"])
    assert (params["train.method"], params["train.adapter"]) == ("sft+dpo", "dora")
    assert (params["dpo.steps"], params["dpo.beta"], params["dpo.pairs"]) == ("8", "0.1", "30")
    assert metrics["dpo.loss_mean"] == 0.6 and metrics["dpo.reward_accuracy"] == 0.75
    assert tags["model.adapter_on"] == "sft_model", "the adapter applies to the SFT model, not the base"
    card = model_card(record, "v2")
    assert "then preference training (TRL DPOTrainer)" in card and "adapter\n`dora`" in card
    assert "DPO: 8 steps on 30 preference pairs, beta 0.1; scored on 5 held-out pairs" in card
    sft_only = lineage()
    assert sft_only.version_tags()["model.adapter_on"] == "base_model" and "dpo.steps" not in sft_only.mlflow_params()
    full = replace(sft_only, trained=replace(sft_only.trained, adapter="full", adapter_dir=None))
    assert full.version_tags()["model.adapter_on"] == "none"


def test_only_unreachable_tracking_servers_are_retried():
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    assert is_transient(requests.exceptions.ConnectionError("refused"))
    assert is_transient(MlflowException("API request failed: Max retries exceeded with url"))
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert not is_transient(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(ValueError("primary_metric 'x' is not among the computed metrics"))


def test_an_answer_pattern_makes_exact_match_compare_final_answers():
    reference = "Half of 12 is 6, plus 4 is 10.\n#### 10"
    assert extract_answer(reference, r"#### (.+)") == "10"
    assert extract_answer("The answer is 7. Wait: the answer is 9.", r"answer is (\d+)") == "9", "the last match"
    assert extract_answer("no marker", r"#### (.+)") is None
    right = score_answer("6 + 4 = 10\n#### 10", reference, "open_ended", r"#### (.+)")
    assert right["exact_match"] == 1.0 and score_answer("#### 10", reference)["exact_match"] == 0.0
    assert score_answer("It is 10.", reference, "open_ended", r"#### (.+)")["exact_match"] == 0.0, "no marker: wrong"
    assert score_answer("#### Paris", "Paris", "open_ended", r"#### (.+)")["exact_match"] == 1.0, "bare reference"


class CharTokenizer:
    """Stands in for a tokenizer: one token per character."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t) for t in texts]}


def test_generation_budget_fits_nearly_every_reference():
    references = ["x" * n for n in range(1, 101)]  # 1..100 tokens
    assert generation_budget(CharTokenizer(), references, cap=512) == 95 + 24 + 1  # p95, a quarter, end of turn
    assert generation_budget(CharTokenizer(), references, cap=64) == 64
    assert generation_budget(CharTokenizer(), ["abcd"], cap=512) == 4 + 1 + 1


CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}</tool_call>'


def test_tool_calls_are_scored_by_name_and_arguments_by_value():
    assert task_type([CALL], tool_calls=True) == "tool_call"
    same = '<tool_call>{"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}</tool_call>'
    assert score_answer(same, CALL, "tool_call")["exact_match"] == 1.0, "argument order does not matter"
    wrong_city = CALL.replace("Paris", "Lyon")
    scores = score_answer(wrong_city, CALL, "tool_call")
    assert (scores["exact_match"], scores["tool_name_accuracy"]) == (0.0, 1.0)
    other_tool = CALL.replace("get_weather", "get_time")
    assert score_answer(other_tool, CALL, "tool_call")["tool_name_accuracy"] == 0.0
    assert score_answer("It is sunny in Paris.", CALL, "tool_call")["exact_match"] == 0.0, "no call made"
    # a turn that should answer in text (after the tool replied) must not call again
    assert score_answer("Sunny, 21 C.", "Sunny, 21 C.", "tool_call")["exact_match"] == 1.0
    assert score_answer(CALL, "Sunny, 21 C.", "tool_call")["exact_match"] == 0.0
