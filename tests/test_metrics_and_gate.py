import pytest

from assets.model_evaluation import mean_scores, metrics_table, score_answer, task_type
from assets.registered_model import GateConfig, gate_verdict, is_transient, model_card

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


def evaluation(base=0.1, tuned=0.8, champion=None, forgetting=2.0, task="json"):
    return {
        "primary_metric": "exact_match",
        "task_type": task,
        "base": {"exact_match": base},
        "tuned": {"exact_match": tuned},
        "champion": None if champion is None else {"version": "3", "metrics": {"exact_match": champion}},
        "forgetting_pct": forgetting,
        "eval_examples": 10,
        "eval_set_hash": "abc",
    }


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
    ok, reason, rows = gate_verdict(evaluation(**kwargs), GateConfig(**gate))
    assert ok is passed
    assert phrase in reason
    assert all(set(r) == {"criterion", "value", "threshold", "passed"} for r in rows)


def test_model_card_shows_data_metrics_use_and_limits():
    data = {"drops": "d1,d2", "rows_raw": 100, "rows_valid": 95, "rows_rejected": 5, "rows_excluded": 0,
            "train_rows": 80, "train_set_hash": "h"}  # fmt: skip
    full = evaluation()
    full["base"].update(eval_loss=2.0)
    full["tuned"].update(eval_loss=0.5)
    card = model_card("m", "v1", full, data, "/models/base", "cpu", (True, "beats base"))
    for heading in ("## Data", "## Evaluation", "## Intended use", "## Limits"):
        assert heading in card
    assert "| exact_match (primary) | 0.1000 | 0.8000 | +0.7000 |" in card
    assert "100 raw, 95 valid, 5 rejected" in card and "Gate: **passed**" in card


def test_only_unreachable_tracking_servers_are_retried():
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    assert is_transient(requests.exceptions.ConnectionError("refused"))
    assert is_transient(MlflowException("API request failed: Max retries exceeded with url"))
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert not is_transient(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(ValueError("primary_metric 'x' is not among the computed metrics"))
