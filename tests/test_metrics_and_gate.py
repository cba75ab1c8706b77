import pytest

from assets.model_evaluation import mean_scores, metrics_table, score_answer
from assets.registered_model import promotion_decision

EXPECTED = '{"category": "billing", "priority": "high", "product": "CloudDrive"}'


def test_json_answers_compare_by_value_not_by_spacing_or_key_order():
    same = '{"product":"CloudDrive","priority":"high","category":"billing"}'
    assert score_answer(same, EXPECTED) == {"exact_match": 1.0, "json_valid": 1.0, "field_accuracy": 1.0}


def test_partly_right_json_earns_field_accuracy_only():
    wrong = '{"category": "billing", "priority": "low", "product": "CloudDrive"}'
    scores = score_answer(wrong, EXPECTED)
    assert scores["exact_match"] == 0.0 and scores["json_valid"] == 1.0
    assert scores["field_accuracy"] == pytest.approx(2 / 3)


def test_invalid_json_scores_zero_everywhere():
    assert score_answer("The category is billing.", EXPECTED) == {
        "exact_match": 0.0,
        "json_valid": 0.0,
        "field_accuracy": 0.0,
    }


def test_plain_text_answers_use_normalized_exact_match():
    assert score_answer("  Paris ", "paris") == {"exact_match": 1.0}
    assert score_answer("Lyon", "Paris") == {"exact_match": 0.0}


def test_mean_scores_average_per_metric():
    means = mean_scores([score_answer(EXPECTED, EXPECTED), score_answer("nope", EXPECTED)])
    assert means == {"exact_match": 0.5, "field_accuracy": 0.5, "json_valid": 0.5}


def test_metrics_table_marks_the_primary_metric():
    table = metrics_table({"exact_match": 0.1, "eval_loss": 2.0}, {"exact_match": 0.9, "eval_loss": 0.5}, "exact_match")
    assert "| exact_match (primary) | 0.1000 | 0.9000 | +0.8000 |" in table


@pytest.mark.parametrize(
    ("base", "tuned", "champion", "margins", "promoted", "phrase"),
    [
        (0.1, 0.8, None, (0.0, 0.0), True, "beats base 0.1000"),
        (0.1, 0.8, 0.7, (0.0, 0.0), True, "and champion 0.7000"),
        (0.1, 0.8, 0.8, (0.0, 0.0), False, "does not beat champion"),
        (0.1, 0.8, 0.9, (0.0, 0.0), False, "does not beat champion"),
        (0.1, 0.8, 0.75, (0.0, 0.1), False, "does not beat champion 0.7500 by more than 0.1"),
        (0.5, 0.5, None, (0.0, 0.0), False, "does not beat base"),
        (0.1, 0.15, None, (0.1, 0.0), False, "by more than 0.1"),
        (0.0, 0.0, None, (-1.0, 0.0), True, "beats base"),
    ],
)
def test_gate_needs_to_beat_base_and_champion(base, tuned, champion, margins, promoted, phrase):
    ok, reason = promotion_decision("exact_match", base, tuned, champion, *margins)
    assert ok is promoted
    assert phrase in reason
