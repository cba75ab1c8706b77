"""Every family trains whole on its own chat template: SFT then DPO, evaluation, registration, and the
served model answering a request, for tiny random models of Llama 3, Qwen 2.5, Gemma 3, Mistral and
Phi-3 with their published templates and end tokens, and a base with no chat template at all."""

import json
import shutil

import pandas as pd
import pytest

from assets.domain.chat import training_chat_template, training_tokens
from pipelines.settings import SAMPLE_LANDING
from tests.conftest import make_settings, run_all
from tests.model_families import FAMILIES, FAMILY_SPECS, build_family_model

LOWER_BAR = {"min_improvement": -1.0, "min_gain_over_champion": -1.0, "max_forgetting_pct": 1000.0}
REQUEST = [
    {"role": "system", "content": "You are a precise assistant. Follow the instruction exactly."},
    {"role": "user", "content": "Triage this support ticket.\n\nMy CloudDrive app keeps crashing."},
]
CHAT = [
    *REQUEST,
    {"role": "assistant", "content": '{"product": "CloudDrive"}'},
    {"role": "user", "content": "And the priority?"},
    {"role": "assistant", "content": "high"},
]


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, bundled_tokenizer_dir):
    root = tmp_path_factory.mktemp("families")
    return {f: build_family_model(f, root / f, base_tokenizer=bundled_tokenizer_dir) for f in FAMILIES}


@pytest.fixture(scope="session")
def small_landing(tmp_path_factory):
    """The first sample drop's first 60 tickets and the preference drop: SFT and DPO both train."""
    landing = tmp_path_factory.mktemp("family_landing")
    (landing / "2026-01-05").mkdir()
    lines = (SAMPLE_LANDING / "2026-01-05" / "tickets.jsonl").read_text().splitlines()[:60]
    (landing / "2026-01-05" / "tickets.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copytree(SAMPLE_LANDING / "2026-01-26", landing / "2026-01-26")
    return landing


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_covers_each_answer_and_its_end_of_turn_token(family, family_dirs):
    """Whatever the template (TRL's patched one, or spans derived from the published one), each
    answer's tokens and the end-of-turn token after it carry loss, and nothing of the prompts does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assets.domain.chat import ready_for_chat

    tokenizer = AutoTokenizer.from_pretrained(family_dirs[family])
    ready_for_chat(tokenizer, AutoModelForCausalLM.from_pretrained(family_dirs[family]))
    spec = FAMILY_SPECS[family]
    end = spec.end_of_turn if spec.chat_template else "<|im_end|>"
    encoded = training_tokens(tokenizer, CHAT, None, training_chat_template(tokenizer))
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    runs, current = [], []
    for token, carries in zip(ids, mask):
        if carries:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    assert len(runs) == 2, "one run of loss tokens per answer"
    for run, answer in zip(runs, ['{"product": "CloudDrive"}', "high"]):
        text = tokenizer.decode(run, skip_special_tokens=False)
        assert answer in text and end in text, text
        assert "CloudDrive app" not in text and "priority" not in text


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, tmp_path_factory, family_dirs, small_landing):
    home = tmp_path_factory.mktemp(f"ft_{request.param}")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, str(family_dirs[request.param]), landing=small_landing).prepare()
    overrides = {"gate": {**LOWER_BAR, "min_preference_gain": -1.0}}
    _, _, result, problems = run_all(settings, overrides)
    yield request.param, settings, result, problems
    mp.undo()


@pytest.mark.integration
def test_family_trains_evaluates_registers_and_serves(family_run):
    import mlflow

    family, settings, result, problems = family_run
    assert result.success, problems
    base = result.asset_materializations_for_node("base_model")[0].metadata
    if FAMILY_SPECS[family].chat_template is None:
        assert "default ChatML template" in base["chat_template"].value
    pairs = result.output_for_node("instruction_pairs")
    assert pairs.summary.train_rows > 0 and pairs.summary.preference_pairs > 0
    candidate = result.output_for_node("preference_tuned_model")
    assert candidate.method == "sft+dpo" and candidate.preference.steps == 2
    evaluation = result.output_for_node("model_evaluation")
    assert 0.0 <= evaluation.tuned["end_of_turn_rate"] <= 1.0 and "preference_accuracy" in evaluation.tuned

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/1")
    reply = served.predict(pd.DataFrame([{"messages": REQUEST}]), params={"max_new_tokens": 8}).iloc[0]
    assert reply["role"] == "assistant" and reply["finish_reason"] in ("stop", "length", "tool_calls")
    assert isinstance(reply["content"], str)
    card = json.dumps(result.asset_materializations_for_node("registered_model")[0].metadata["model_card"].value)
    assert settings.model_name in card
