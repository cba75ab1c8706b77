"""Regression suites: local benchmark files scored through lm-evaluation-harness, item by item, and the
gate's per-suite criterion. The harness runs for real here, on the tiny model (and a PEFT adapter on it);
and on a pipeline run of the bundled SmolLM2 taught wrong answers to the shipped suite's questions (a
planted regression), with SmolLM2 as the judge."""

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from assets.domain.evaluation import EvaluationConfig, SuiteConfig
from assets.domain.values import ChampionScores
from assets.model_evaluation import regression_suites, suite_key
from data_checks.promotion_gate import GateConfig, gate_verdict
from pipelines.presets import stage_resources
from resources.benchmark_suites import GENERATION, MULTIPLE_CHOICE, Suite, answer_index, score_suite, suite_kind
from tests.test_metrics_and_gate import evaluation, scores

QUESTIONS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Berlin", "Rome"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["Six", "Eight"], "answer": "B"},
    {"question": "Which planet is red?", "choices": ["Venus", "Mars", "Earth"], "answer": "Mars"},
]
PROMPTS = [
    {"prompt": "Say yes.", "reference": "yes"},
    {"prompt": "Name a colour.", "reference": "blue"},
    {"prompt": "Count to three.", "reference": "one two three"},
]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from resources.models import ModelLoader

    loader = ModelLoader()
    return loader.load_tokenizer(str(tiny_model_dir)), loader.load_model(str(tiny_model_dir)).eval()


def test_answers_are_read_as_an_index_a_letter_or_the_choices_text():
    assert [answer_index(q)["answer"] for q in QUESTIONS] == [0, 1, 1]
    with pytest.raises(ValueError, match=r"answer 'Z' is not an index, letter or text of the choices"):
        answer_index({"choices": ["a", "b"], "answer": "Z"})


def test_a_suites_kind_comes_from_its_columns_and_a_file_with_neither_is_refused(tmp_path):
    assert suite_kind(jsonl(tmp_path / "mc.jsonl", QUESTIONS)) == MULTIPLE_CHOICE
    pd.DataFrame(PROMPTS).to_parquet(tmp_path / "gen.parquet")
    assert suite_kind(str(tmp_path / "gen.parquet")) == GENERATION
    bad = jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match=r"bad.jsonl: a benchmark suite needs the columns question, choices, answer"):
        suite_kind(bad)


def test_the_configured_suites_get_their_metric_and_a_wrong_one_is_refused_by_name(tmp_path):
    mc, gen = jsonl(tmp_path / "mc.jsonl", QUESTIONS), jsonl(tmp_path / "gen.jsonl", PROMPTS)
    suites = regression_suites([SuiteConfig(name="facts", path=mc), SuiteConfig(name="say", path=gen, metric="rougeL")])
    assert [(s.kind, s.metric) for s in suites] == [(MULTIPLE_CHOICE, "acc"), (GENERATION, "rougeL")]
    assert suite_key(suites[0]) == "suite.facts.acc"
    with pytest.raises(ValueError, match=r"evaluation.suites 'facts' .* metric 'rougeL' does not score a multiple"):
        regression_suites([SuiteConfig(name="facts", path=mc, metric="rougeL")])
    with pytest.raises(FileNotFoundError, match=r"evaluation.suites 'gone': no such file"):
        regression_suites([SuiteConfig(name="gone", path=str(tmp_path / "gone.jsonl"))])


def test_the_default_preset_ships_a_suite_whose_path_is_taken_from_the_preset_folder():
    suites = stage_resources("cpu")["evaluation"].suites
    assert [s.name for s in suites] == ["general_knowledge"] and suites[0].max_regression == 0.15
    (suite,) = regression_suites(suites)
    assert suite.kind == MULTIPLE_CHOICE and len(Path(suite.path).read_text().splitlines()) == 32


def test_the_suites_files_are_part_of_what_makes_two_evaluations_comparable(tmp_path):
    path = jsonl(tmp_path / "mc.jsonl", QUESTIONS)
    first = EvaluationConfig(suites=[SuiteConfig(name="facts", path=path)]).settings_hash(32)
    assert first != EvaluationConfig().settings_hash(32)
    jsonl(tmp_path / "mc.jsonl", QUESTIONS[:2])
    assert EvaluationConfig(suites=[SuiteConfig(name="facts", path=path)]).settings_hash(32) != first


def test_the_harness_scores_each_item_of_every_kind_on_a_loaded_model_and_its_adapter(tmp_path, tiny):
    from peft import LoraConfig, get_peft_model

    tokenizer, model = tiny
    from assets.domain.chat import training_chat_template

    template = training_chat_template(tokenizer) or tokenizer.chat_template
    pd.DataFrame(QUESTIONS[:1] + [dict(QUESTIONS[1], answer=1)]).to_parquet(tmp_path / "mc.parquet")
    suites = [
        Suite("mc", jsonl(tmp_path / "mc.jsonl", QUESTIONS), MULTIPLE_CHOICE, "acc"),
        Suite("mcp", str(tmp_path / "mc.parquet"), MULTIPLE_CHOICE, "acc_norm"),
        Suite("em", jsonl(tmp_path / "em.jsonl", PROMPTS), GENERATION, "exact_match", max_new_tokens=4),
        Suite("rl", str(tmp_path / "em.jsonl"), GENERATION, "rougeL", max_new_tokens=4),
    ]
    base = [score_suite(model, tokenizer, s, template, 4) for s in suites]
    assert [len(s) for s in base] == [3, 2, 3, 3], "one score per row, in the file's order"
    assert all(v in (0.0, 1.0) for s in base[:3] for v in s) and all(0.0 <= v <= 1.0 for v in base[3])
    # A fresh LoRA adapter starts as the identity: the wrapped model scores exactly as the base.
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    assert [score_suite(wrapped, tokenizer, s, template, 4) for s in suites] == base
    plain = score_suite(wrapped.get_base_model(), tokenizer, suites[0], None, 4)
    assert len(plain) == 3


SUITE = "suite.facts.acc"


def with_suite(ev, base, tuned, tolerance, champion=None):
    items = {side: dict(values) for side, values in ev.items.items()}
    items["base"][SUITE], items["tuned"][SUITE] = base, tuned
    if champion is not None:
        champ = ChampionScores("3", False, {"exact_match": 0.5}, {"exact_match": scores(20), SUITE: champion})
        ev = replace(ev, champion=champ)
    return replace(ev, items=items, suites={SUITE: tolerance})


def test_a_suite_regression_beyond_its_tolerance_blocks_and_is_named_in_the_verdict():
    # 60 questions: the base right on 48, the candidate on 30 (it lost 18 and gained none).
    ev = with_suite(evaluation(), scores(48, 60), scores(30, 60), 0.1)
    verdict = gate_verdict(ev, GateConfig())
    assert not verdict.passed
    (suite,) = [c for c in verdict.criteria if c.criterion.startswith("facts")]
    assert suite.criterion == "facts.acc vs base" and suite.key == "suite_facts_vs_base"
    assert suite.value == pytest.approx(-0.3) and suite.high < 0 and suite.low < -0.1 and not suite.passed
    assert verdict.reason.startswith("facts.acc vs base: -0.3000") and "needs lower bound >= -0.1000" in verdict.reason


def test_a_suite_held_within_its_tolerance_passes_and_one_without_a_tolerance_is_only_scored():
    same = with_suite(evaluation(), scores(48, 60), scores(48, 60), 0.0)
    verdict = gate_verdict(same, GateConfig())
    assert verdict.passed, verdict.reason
    assert [c.criterion for c in verdict.criteria][-1] == "facts.acc vs base"
    ungated = with_suite(evaluation(), scores(48, 60), scores(10, 60), None)
    assert gate_verdict(ungated, GateConfig()).passed
    assert not any(c.criterion.startswith("facts") for c in gate_verdict(ungated, GateConfig()).criteria)


def test_a_suite_is_also_held_against_the_champion_when_the_champion_was_scored_on_it():
    # As good as the base, but 20 questions below the champion: blocked on the champion's criterion alone.
    ev = with_suite(evaluation(champion=scores(20)), scores(30, 60), scores(30, 60), 0.05, champion=scores(50, 60))
    verdict = gate_verdict(ev, GateConfig())
    failed = [c.criterion for c in verdict.criteria if not c.passed]
    assert failed == ["facts.acc vs champion v3"], verdict.reason


# The planted regression: the bundled SmolLM2 fine-tuned on the shipped suite's own questions with wrong
# answers (every one the second choice after the right one), so that what it knew it now gets wrong.
PLANTED_TRAINING = {
    "training": {"sft": {"max_steps": 24, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 2}},
    # The judge on: the bundled SmolLM2 (the base model) judges the candidate's answers against the base's.
    "evaluation": {"max_new_tokens": 16, "judge": {"kind": "local"}},
    "gate": {"min_judge_win_rate": 0.0},
}


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, prepared_bundled_base):
    from pipelines.settings import REPO_ROOT
    from resources.models import BUNDLED_BASE_MODEL
    from tests.conftest import make_settings, run_all, seed_base_model

    landing, home = tmp_path_factory.mktemp("landing"), tmp_path_factory.mktemp("ft_planted")
    suite = REPO_ROOT / "pipelines" / "sample_data" / "suites" / "general_knowledge.jsonl"
    questions = [json.loads(line) for line in suite.open()]
    wrong = [{"instruction": q["question"], "output": q["choices"][(q["answer"] + 1) % 4]} for q in questions]
    (landing / "2026-04-01").mkdir()
    jsonl(landing / "2026-04-01" / "facts.jsonl", wrong)
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, BUNDLED_BASE_MODEL, landing=landing).prepare()
    seed_base_model(settings, prepared_bundled_base)
    shipped = [suite.model_dump() for suite in stage_resources("cpu")["evaluation"].suites]
    overrides = PLANTED_TRAINING | {"evaluation": PLANTED_TRAINING["evaluation"] | {"suites": shipped}}
    _, _, result, _ = run_all(settings, overrides)
    yield settings, result
    mp.undo()


@pytest.mark.e2e
def test_a_planted_regression_on_a_suite_blocks_promotion(planted_run):
    from mlflow import MlflowClient

    from pipelines.run import gate_only_failure

    settings, result = planted_run
    assert gate_only_failure(result.all_events), "the run fails on the gate alone"
    evaluation = result.output_for_node("model_evaluation")
    key = "suite.general_knowledge.acc"
    assert len(evaluation.items["base"][key]) == 32 and evaluation.suites == {key: 0.15}
    assert evaluation.base[key] > 0.4, "the base model knows about half of these"
    verdict = result.output_for_node("registered_model").gate
    (suite,) = [c for c in verdict.criteria if c.key == "suite_general_knowledge_vs_base"]
    assert not suite.passed and suite.high < 0, "the loss is shown, not only the mean"
    assert "general_knowledge.acc vs base" in verdict.reason
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(settings.model_name, "challenger")
    assert "champion" not in (version.aliases or [])
    metrics = client.get_run(version.run_id).data.metrics
    assert metrics[f"base.{key}"] == pytest.approx(evaluation.base[key], abs=1e-4), "rounded to 4 decimals"


@pytest.mark.e2e
def test_a_local_judge_runs_end_to_end_and_its_win_rate_is_a_gate_criterion(planted_run):
    _, result = planted_run
    evaluation = result.output_for_node("model_evaluation")
    judged = evaluation.judge["base"]
    assert len(judged) == evaluation.eval_examples and set(judged) <= {0.0, 0.5, 1.0}
    assert "champion" not in evaluation.judge, "no champion yet"
    assert evaluation.tuned["judge_win_rate_vs_base"] == pytest.approx(sum(judged) / len(judged))
    (criterion,) = [c for c in result.output_for_node("registered_model").gate.criteria if c.key == "judge_vs_base"]
    assert criterion.items == len(judged) and criterion.low <= criterion.value <= criterion.high
