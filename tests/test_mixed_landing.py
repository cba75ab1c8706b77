"""A landing folder as users bring it: several formats and file types, bad rows, an unreadable drop.

The real graph on the tiny model: the right rows are rejected with their reasons and counted in
MLflow, the unreadable drop is held back without stopping the others, preference pairs are kept
but not trained on.
"""

import gzip
import json
import pickle

import dagster as dg
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import make_settings, run_all

pytestmark = pytest.mark.integration


def stored(settings, asset, partition):
    return pickle.loads((settings.home / "storage" / asset / partition).read_bytes())


def m(role, content):
    return {"role": role, "content": content}


def latest_check(instance, name: str, drop: str):
    """The evaluation of check `name` in the ingestion run of `drop`."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="ingest_drop", tags={"dagster/partition": drop}))
    (entry,) = [
        e
        for e in instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        if e.dagster_event.event_specific_data.asset_check_key.name == name
    ]
    return entry.dagster_event.event_specific_data


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
    (root / "2026-02-04").mkdir()
    junk = [{"prompt": f"Junk {i}", "completion": "" if i % 2 else "ok"} for i in range(6)]  # half rejected
    (root / "2026-02-04/junk.jsonl").write_text("".join(json.dumps(r) + "\n" for r in junk))
    # good data longer than the smoke preset's 512 tokens: 3 answers too long alone (left out, the drop not
    # held back for them), 3 prompts too long (cut to fit), 4 rows that fit
    story = "Once upon a time. " * 150
    long = [
        {
            "prompt": f"Tell story {i}." + (f" {story}" if 3 <= i < 6 else ""),
            "completion": story if i < 3 else "The end.",
        }
        for i in range(10)
    ]
    (root / "2026-02-05").mkdir()
    (root / "2026-02-05/stories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_model_dir):
    landing = tmp_path_factory.mktemp("landing")
    write_landing(landing)
    home = tmp_path_factory.mktemp("ft_mixed")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, str(tiny_model_dir), landing=landing).prepare()
    # a tiny random model learns nothing: lower the gate so the run completes end to end
    lower_bar = {"gate": {"min_improvement": -1.0, "max_forgetting_pct": 1000.0, "min_preference_gain": -1.0}}
    _, instance, result, problems = run_all(settings, lower_bar)
    yield settings, result, instance, problems
    mp.undo()


def test_the_run_goes_on_without_the_unreadable_drop(mixed):
    settings, result, instance, problems = mixed
    assert result.success
    assert problems[0] == (
        "- step raw_records: assets.raw_records.IngestError: 2026-02-03/broken.jsonl, line 2: not valid JSON "
        "(Expecting value at column 12). Each line of a .jsonl file must be one JSON object. The raw file is "
        "left as it is: fix it at its source and land it again. (drop 2026-02-03 held back)"
    )
    assert "3 of 6 rows rejected as bad data (50.0%); limit 10.0%" in "\n".join(problems[1:])
    assert sorted(instance.get_materialized_partitions(dg.AssetKey("raw_records"))) == [
        "2026-02-01",
        "2026-02-02",
        "2026-02-04",
        "2026-02-05",
    ]
    validated = instance.get_materialized_partitions(dg.AssetKey("validated_records"))
    assert sorted(validated) == ["2026-02-01", "2026-02-02", "2026-02-05"], "the failed drop wrote no validated rows"
    pairs = result.output_for_node("instruction_pairs").frame()
    assert sorted(pairs["drop"].unique()) == ["2026-02-01", "2026-02-02", "2026-02-05"]
    metadata = instance.get_latest_materialization_event(dg.AssetKey("instruction_pairs")).asset_materialization
    assert metadata.metadata["drops_held_back"].value == ["2026-02-03", "2026-02-04"]
    files = {
        f: s for d in ("2026-02-01", "2026-02-02") for f, s in stored(settings, "raw_records", d).summary.files.items()
    }
    assert {f: (s.format, s.rows) for f, s in files.items()} == {
        "2026-02-01/chat.jsonl": ("openai_chat", 40),
        "2026-02-01/share.json.gz": ("sharegpt", 30),
        "2026-02-02/dolly.csv": ("dolly", 30),
        "2026-02-02/prefs.parquet": ("preference", 10),
    }


def test_bad_rows_are_rejected_or_excluded_with_reasons_and_counted_in_mlflow(mixed):
    settings, result, _, _ = mixed
    rejected = pd.concat([stored(settings, "rejected_records", d).frame() for d in ("2026-02-01", "2026-02-02")])
    reasons = dict(zip(rejected["source_file"] + ":" + rejected["source_line"].astype(str), rejected["reason"]))
    assert reasons == {
        "2026-02-01/chat.jsonl:39": "chat structure broken: turn 2 is from the user, expected the assistant "
        "(turns must alternate)",
        "2026-02-01/chat.jsonl:40": "chat structure broken: turn 2 (assistant) is empty",
    }
    pairs = result.output_for_node("instruction_pairs").frame()
    excluded = pairs[pairs["split"] == "excluded"]
    assert excluded[["source_file", "source_line", "excluded_reason"]].values.tolist() == [
        ["2026-02-02/dolly.csv", 31, "duplicate of 2026-02-01/chat.jsonl:4 from an earlier drop"]
    ]
    run_id = result.output_for_node("registered_model").mlflow_run_id
    params = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_run(run_id).data.params
    counts = [params[f"data.rows_{k}"] for k in ("raw", "valid", "rejected", "excluded")]
    assert counts == ["120", "115", "2", "1"], "rejected as bad data: the two broken chats"
    assert (params["data.rows_truncated"], params["data.rows_left_out"]) == ("3", "3"), "left out apart"


def test_over_long_rows_are_cut_or_left_out_without_holding_the_drop_back(mixed):
    settings, result, instance, _ = mixed
    rejected = stored(settings, "rejected_records", "2026-02-05").frame()
    assert sorted(rejected["source_line"]) == [1, 2, 3]
    assert all(r.startswith("the final answer alone is longer than max_tokens=512: ") for r in rejected["reason"])
    share = latest_check(instance, "rejected_share_within_limit", "2026-02-05")
    assert share.passed
    assert share.metadata["rows_left_out"].value == 3 and share.metadata["rows_rejected"].value == 0
    assert "3 rows left out of training and not counted: the final answer alone is longer" in share.description
    pairs = result.output_for_node("instruction_pairs").frame()
    stories = pairs[pairs["drop"] == "2026-02-05"].sort_values("source_line")
    assert stories["source_line"].tolist() == [4, 5, 6, 7, 8, 9, 10]
    cut = stories[stories["source_line"] <= 6]
    assert (cut["n_tokens"] <= 512).all() and all(m[-1]["content"] == "The end." for m in cut["messages"])


def test_multi_turn_and_preference_examples_keep_their_shape(mixed):
    _, result, _, _ = mixed
    pairs = result.output_for_node("instruction_pairs").frame()
    multi = pairs[pairs["source_file"].eq("2026-02-01/chat.jsonl") & pairs["source_line"].eq(6)].iloc[0]
    assert [t["role"] for t in multi["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    prefs = pairs[pairs["kind"] == "preference"]
    assert len(prefs) == 10 and set(prefs["chosen"]) == {"Good."} and set(prefs["rejected"]) == {"Bad."}
    trained = result.output_for_node("fine_tuned_model")
    sft_train = pairs[(pairs["kind"] == "sft") & (pairs["split"] == "train")]
    assert trained.train_examples == len(sft_train)
    # the pairs in the train split go to DPO, on top of the SFT model (method auto)
    candidate, train_pairs = result.output_for_node("preference_tuned_model"), int((prefs["split"] == "train").sum())
    assert candidate.method == ("sft+dpo" if train_pairs else "sft")
    assert (candidate.preference.pairs if candidate.preference else 0) == train_pairs
