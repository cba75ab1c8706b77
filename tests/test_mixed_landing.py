"""A landing folder as users bring it: several formats and file types, bad rows, an unreadable drop.

The real graph on the tiny model: the right rows are rejected with their reasons and counted in
MLflow, the unreadable drop is held back without stopping the others, preference pairs are kept
but not trained on.
"""

import gzip
import json

import dagster as dg
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.definitions import build_definitions
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def m(role, content):
    return {"role": role, "content": content}


def write_landing(root):
    chat = [{"messages": [m("user", f"Question {i}?"), m("assistant", f"Answer {i}.")]} for i in range(38)]
    chat.append({"messages": [m("user", "Hi"), m("user", "Hello?"), m("assistant", "Hey.")]})  # not alternating
    chat.append({"messages": [m("system", "Be brief."), m("user", "Empty?"), m("assistant", "")]})  # empty answer
    chat[5]["messages"] += [m("user", "And then?"), m("assistant", "Then done.")]  # multi-turn stays multi-turn
    share = [
        {"conversations": [{"from": "human", "value": f"Share {i}"}, {"from": "gpt", "value": f"Reply {i}"}]}
        for i in range(30)
    ]
    dolly = [
        {"instruction": f"Summarize item {i}.", "context": f"Item {i} is blue.", "response": "Blue.", "category": "x"}
        for i in range(29)
    ]
    dolly.append({"instruction": "QUESTION 3?", "context": "", "response": "answer 3.", "category": "dup"})
    prefs = pd.DataFrame([{"prompt": f"Pick {i}", "chosen": "Good.", "rejected": "Bad."} for i in range(10)])

    (root / "2026-02-01").mkdir(parents=True)
    (root / "2026-02-02").mkdir()
    (root / "2026-02-03").mkdir()
    (root / "2026-02-01/chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    (root / "2026-02-01/share.json.gz").write_bytes(gzip.compress(json.dumps(share).encode()))
    pd.DataFrame(dolly).to_csv(root / "2026-02-02/dolly.csv", index=False)
    prefs.to_parquet(root / "2026-02-02/prefs.parquet", index=False)
    (root / "2026-02-03/broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_model_dir):
    landing = tmp_path_factory.mktemp("landing")
    write_landing(landing)
    home = tmp_path_factory.mktemp("ft_mixed")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, str(tiny_model_dir), landing=landing).prepare()
    result = (
        build_definitions(settings)
        .resolve_job_def("finetune")
        .execute_in_process(instance=dg.DagsterInstance.ephemeral())
    )
    yield settings, result
    mp.undo()


def test_the_run_goes_on_without_the_unreadable_drop(mixed):
    _, result = mixed
    assert result.success
    checks = {
        e.event_specific_data.asset_check_key.name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    readable = checks["every_drop_readable"]
    assert not readable.passed
    assert readable.description.startswith("2026-02-03/broken.jsonl, line 2: not valid JSON")
    raw = result.output_for_node("raw_records")
    assert sorted(raw["drop"].unique()) == ["2026-02-01", "2026-02-02"]
    assert raw["format"].value_counts().to_dict() == {"openai_chat": 40, "sharegpt": 30, "dolly": 30, "preference": 10}


def test_bad_rows_are_rejected_with_reasons_and_counted_in_mlflow(mixed):
    settings, result = mixed
    rejected = result.output_for_node("validated_records", "rejected_records")
    reasons = dict(zip(rejected["source_file"] + ":" + rejected["source_line"].astype(str), rejected["reason"]))
    assert reasons == {
        "2026-02-01/chat.jsonl:39": "chat structure broken: turn 2 is from the user, expected the assistant "
        "(turns must alternate)",
        "2026-02-01/chat.jsonl:40": "chat structure broken: turn 2 (assistant) is empty",
        "2026-02-02/dolly.csv:31": (
            "duplicate of an earlier row: same as 2026-02-01/chat.jsonl:4 up to case and whitespace"
        ),
    }
    run_id = result.output_for_node("registered_model")["mlflow_run_id"]
    params = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_run(run_id).data.params
    assert (params["data.rows_raw"], params["data.rows_valid"], params["data.rows_rejected"]) == ("110", "107", "3")


def test_multi_turn_and_preference_examples_keep_their_shape(mixed):
    _, result = mixed
    pairs = result.output_for_node("instruction_pairs")
    multi = pairs[pairs["source_file"].eq("2026-02-01/chat.jsonl") & pairs["source_line"].eq(6)].iloc[0]
    assert [t["role"] for t in multi["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    prefs = pairs[pairs["kind"] == "preference"]
    assert len(prefs) == 10 and set(prefs["chosen"]) == {"Good."} and set(prefs["rejected"]) == {"Bad."}
    trained = result.output_for_node("fine_tuned_model")
    sft_train = pairs[(pairs["kind"] == "sft") & (pairs["split"] == "train")]
    assert trained["train_examples"] == len(sft_train)
