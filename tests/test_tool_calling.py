"""A tool-calling drop as a hosted fine-tuning API takes it, through the real graph on the tiny model.

Nothing is lost: every row is validated or rejected with its reason (two rows are broken on purpose),
the tool calls, tool replies, tools and turn weights reach `instruction_pairs`, the model trains and
is registered, and the registered chat model takes tools in a request and returns parsed tool calls.
"""

import json
import pickle

import mlflow
import pandas as pd
import pytest

from tests.conftest import make_settings, run_all

pytestmark = pytest.mark.integration

DROP = "2026-03-02"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TICKET = {
    "type": "function",
    "function": {
        "name": "create_ticket",
        "description": "Open a support ticket.",
        "parameters": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "priority": {"type": "string", "enum": ["low", "high"]}},
            "required": ["title", "priority"],
        },
    },
}
TOOLS = [WEATHER, TICKET]
CITIES = ["Oslo", "Paris", "Lima", "Cairo", "Perth", "Quito", "Seoul", "Dakar", "Hanoi", "Bern"]
ISSUES = ["printer jams", "VPN drops", "laptop will not boot", "mail bounces", "badge does not open the door"]


def call(id_: str, name: str, arguments: dict) -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def assistant_calls(*calls: dict) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def tool_row(i: int) -> dict:
    """Row i of a small tool-calling task: weather questions and support tickets, some answered after
    the tool replies, some ending with the call itself, some after a greeting kept as context."""
    if i % 2 == 0:
        city = CITIES[i % len(CITIES)]
        ask = {"role": "user", "content": f"What is the weather in {city} on day {i}?"}
        calling = assistant_calls(call(f"w{i}", "get_weather", {"city": city}))
        reply = {"role": "tool", "tool_call_id": f"w{i}", "content": json.dumps({"temp_c": i % 30, "sky": "clear"})}
        answer = {"role": "assistant", "content": f"It is {i % 30} C and clear in {city}."}
    else:
        issue, priority = ISSUES[i % len(ISSUES)], "high" if i % 3 == 0 else "low"
        ask = {"role": "user", "content": f"Please open a ticket #{i}: the {issue}."}
        calling = assistant_calls(call(f"t{i}", "create_ticket", {"title": f"#{i} {issue}", "priority": priority}))
        reply = {"role": "tool", "tool_call_id": f"t{i}", "content": json.dumps({"ticket": f"T-{i}"})}
        answer = {"role": "assistant", "content": f"Opened ticket T-{i} ({priority} priority)."}
    messages = [ask, calling] if i % 7 == 0 else [ask, calling, reply, answer]
    if i % 5 == 0:  # an earlier exchange is context only: weight 0
        messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello.", "weight": 0}]
        messages += [ask, calling, reply, {**answer, "weight": 1}]
    return {"messages": [{"role": "system", "content": "You are a helpdesk assistant."}, *messages], "tools": TOOLS}


def write_landing(root) -> None:
    rows = [tool_row(i) for i in range(80)]
    broken_arguments = tool_row(82)  # messages[2] is its call
    broken_arguments["messages"][2]["tool_calls"][0]["function"]["arguments"] = "{'city': 'Oslo'}"
    unknown_tool = tool_row(81)
    unknown_tool["messages"][2]["tool_calls"][0]["function"]["name"] = "reboot_server"
    (root / DROP).mkdir(parents=True)
    jsonl = [*rows[:60], broken_arguments, unknown_tool]
    (root / DROP / "tools.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl))
    pd.DataFrame(rows[60:]).to_parquet(root / DROP / "tools.parquet", index=False)


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory, tiny_model_dir):
    landing = tmp_path_factory.mktemp("tool_landing")
    write_landing(landing)
    home = tmp_path_factory.mktemp("ft_tools")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, str(tiny_model_dir), landing=landing).prepare()
    # The tool schemas sit in every example's system turn, so examples run longer than plain chats.
    overrides = {
        "validation": {"max_tokens": 512},
        "gate": {"min_improvement": -1.0, "max_forgetting_pct": 1000.0},  # a tiny random model learns nothing
    }
    _, instance, result, problems = run_all(settings, overrides)
    yield settings, result, problems
    mp.undo()


def stored(settings, asset):
    return pickle.loads((settings.home / "storage" / asset / DROP).read_bytes())


def test_a_tool_calling_drop_loses_no_row(tool_run):
    settings, result, problems = tool_run
    assert result.success, problems
    raw, validated, rejected = (stored(settings, a) for a in ("raw_records", "validated_records", "rejected_records"))
    assert (len(raw), len(validated), len(rejected)) == (82, 80, 2)
    reasons = dict(zip(rejected.frame()["source_line"], rejected.frame()["reason"]))
    assert reasons == {
        61: "tool call invalid: turn 2 calls 'get_weather' with arguments that are not valid JSON "
        "(Expecting property name enclosed in double quotes at column 2): \"{'city': 'Oslo'}\"",
        62: "tool call invalid: turn 2 calls 'reboot_server', which is not among the row's tools "
        "(get_weather, create_ticket)",
    }


def test_calls_replies_tools_and_weights_reach_the_pairs(tool_run):
    _, result, _ = tool_run
    pairs = result.output_for_node("instruction_pairs").frame()
    assert len(pairs) == 80 and (pairs["split"] != "excluded").all()
    by_source = {(r.source_file, r.source_line): r for r in pairs.itertuples()}
    expected = {f"{DROP}/tools.jsonl": range(1, 61), f"{DROP}/tools.parquet": range(1, 21)}
    for file, lines in expected.items():
        for line, i in zip(lines, range(0 if file.endswith("jsonl") else 60, 80)):
            row, source = by_source[(file, line)], tool_row(i)
            assert row.tools == TOOLS
            want = [{k: v for k, v in m.items() if v is not None} for m in source["messages"]]
            assert row.messages == [{**m, "content": m.get("content") or ""} for m in want], (file, line)
    plain = [m for messages in pairs["messages"] for m in messages if m["role"] in ("system", "user")]
    assert all(set(m) == {"role", "content"} for m in plain), "no empty tool fields on plain turns"


def test_it_trains_and_the_registered_model_answers_with_parsed_tool_calls(tool_run):
    settings, result, _ = tool_run
    pairs = result.output_for_node("instruction_pairs").frame()
    assert result.output_for_node("fine_tuned_model").train_examples == int((pairs["split"] == "train").sum())
    version = result.output_for_node("registered_model").version
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
    history = tool_row(2)["messages"]  # a request may carry earlier calls and tool replies
    request = [{"messages": history[:2], "tools": TOOLS}, {"messages": history}]
    replies = served.predict(request, params={"max_new_tokens": 4}).to_dict("records")
    assert [r["role"] for r in replies] == ["assistant", "assistant"] and "tool_calls" in replies[0]
    # A tiny random model will not emit a call: the served code's reply assembly is checked directly,
    # with the tool-call module the logged model ships.
    model = served.unwrap_python_model()
    reply = model.assemble(
        'One moment.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', "stop"
    )
    assert reply["content"] == "One moment." and reply["finish_reason"] == "tool_calls"
    (parsed,) = reply["tool_calls"]
    assert parsed["type"] == "function" and parsed["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert model.assemble("Plain text.", "stop") == {
        "role": "assistant",
        "content": "Plain text.",
        "finish_reason": "stop",
        "tool_calls": None,
    }


def test_evaluation_scores_the_calls_of_tool_calling_data(tool_run):
    _, result, _ = tool_run
    evaluation = result.output_for_node("model_evaluation")
    assert (evaluation.task_type, evaluation.primary_metric) == ("tool_call", "exact_match")
    assert {"exact_match", "tool_name_accuracy", "eval_loss"} <= set(evaluation.tuned)
    # the expected replies are the calls as the model is trained to write them
    assert any(s["expected"].startswith("<tool_call>{") for s in evaluation.samples)
