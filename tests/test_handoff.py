"""The registry as the hand-off: the champion served over HTTP, and a roll-back by hand.

Builds on the integration pipeline (tiny model, two registered versions, v1 champion).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import promote

pytestmark = pytest.mark.integration

MESSAGES = [
    {"role": "system", "content": "You are a precise assistant. Follow the instruction exactly."},
    {"role": "user", "content": "Triage this support ticket.\n\nMy CloudDrive app keeps crashing."},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(pipeline):
    settings = pipeline["settings"]
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "PATH": venv_bin + ":" + os.environ["PATH"],
    }
    process = subprocess.Popen(
        [f"{venv_bin}/mlflow", "models", "serve", "-m", f"models:/{settings.model_name}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/ping", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 120 s")
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def local_reply(merged_dir: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    enc = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_served_champion_answers_a_chat_request_with_the_tuned_models_reply(server, pipeline):
    body = {"dataframe_records": [{"messages": MESSAGES}], "params": {"max_new_tokens": 12, "temperature": 0.0}}
    (reply,) = post(server + "/invocations", body)["predictions"]
    assert reply["role"] == "assistant"
    merged = pipeline["first"].output_for_node("preference_tuned_model").merged_dir
    assert reply["content"] == local_reply(merged, 12)


def test_generation_params_are_taken_per_request(server, pipeline):
    short = post(
        server + "/invocations", {"dataframe_records": [{"messages": MESSAGES}], "params": {"max_new_tokens": 2}}
    )
    (reply,) = short["predictions"]
    merged = pipeline["first"].output_for_node("preference_tuned_model").merged_dir
    assert reply["content"] == local_reply(merged, 2) and reply["finish_reason"] == "length"
    sampled = {"dataframe_records": [{"messages": MESSAGES}], "params": {"max_new_tokens": 12, "temperature": 1.5}}
    answers = {post(server + "/invocations", sampled)["predictions"][0]["content"] for _ in range(4)}
    assert len(answers) > 1, "temperature above 0 samples"


def test_a_tool_calling_request_is_answered_over_http(server):
    """Tools and earlier calls travel in the request; the reply carries `tool_calls` (null: no call)."""
    tools = [{"type": "function", "function": {"name": "create_ticket", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "create_ticket", "arguments": '{"title": "crash"}'}}
    history = MESSAGES + [
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "T-1"},
    ]
    body = {
        "dataframe_records": [{"messages": history, "tools": tools}, {"messages": MESSAGES}],
        "params": {"max_new_tokens": 4},
    }
    replies = post(server + "/invocations", body)["predictions"]
    assert [r["role"] for r in replies] == ["assistant", "assistant"]
    assert all("tool_calls" in r for r in replies)


def test_model_card_is_logged_with_each_version(pipeline):
    settings = pipeline["settings"]
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = client.get_model_version(settings.model_name, "2")
    assert "## Intended use" in version.description and "## Limits" in version.description
    card = Path(client.download_artifacts(version.run_id, "model_card.md")).read_text()
    assert card == version.description
    assert "Gate: **not passed**" in card


def test_roll_back_moves_champion_and_records_who_and_why(pipeline, capsys, monkeypatch, tmp_path):
    settings = pipeline["settings"]
    # A copy of the registry, so the shared pipeline's aliases stay as the other tests expect them.
    registry = tmp_path / "mlflow.db"
    shutil.copy(settings.home / "mlflow" / "mlflow.db", registry)
    tracking_uri = f"sqlite:///{registry}"
    # `make promote` reads the same settings as everything else: from the environment
    monkeypatch.setenv("FT_HOME", str(settings.home))
    monkeypatch.setenv("FT_MODEL_NAME", settings.model_name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    assert promote.main(["--version", "2", "--reason", "trying v2", "--by", "dana"]) == 0
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "2"
    assert promote.main(["--version", "1", "--reason", "v2 regressed on billing tickets", "--by", "dana"]) == 0
    v1 = client.get_model_version(settings.model_name, "1")
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"
    assert (v1.tags["promoted_by"], v1.tags["promotion_reason"]) == ("dana", "v2 regressed on billing tickets")
    assert client.get_model_version(settings.model_name, "2").tags["demoted_for"] == "1"
    assert "champion: test-model version 2 -> 1" in capsys.readouterr().out
    assert promote.main(["--version", "9"]) == 1
