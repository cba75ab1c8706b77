"""GRPO rewards: evaluation's scores in TRL's calling convention, and a user's reward function."""

import json

import pytest

from assets.domain.rewards import BUILTIN_REWARDS, completion_text, default_rewards, reward_functions

TICKET = json.dumps({"category": "billing", "priority": "urgent", "product": "RouterX"})


def chat(text: str) -> list[dict]:
    """A completion as GRPOTrainer hands it over for conversational prompts."""
    return [{"role": "assistant", "content": text}]


def rewards_by_name(names, task, answer_pattern="", user_function=""):
    return {f.__name__: f for f in reward_functions(names, task, answer_pattern, user_function)}


def test_json_rewards_score_by_value_and_give_partial_credit():
    rewards = rewards_by_name(default_rewards("json"), "json")
    completions = [
        chat('{"product": "RouterX", "priority": "urgent", "category": "billing"}'),  # key order differs
        chat('{"category": "billing", "priority": "low", "product": "RouterX"}'),  # one field wrong
        chat('{"category": "billing", "priority": "urgent"'),  # cut off: not JSON
        chat('["billing"]'),  # JSON, but not an object
    ]
    answers = [TICKET] * len(completions)
    prompts = [[{"role": "user", "content": "Triage this ticket."}]] * len(completions)
    scored = {name: f(prompts, completions, answer=answers) for name, f in rewards.items()}
    assert scored["exact_match"] == [1.0, 0.0, 0.0, 0.0]
    assert scored["json_valid"] == [1.0, 1.0, 0.0, 1.0]
    assert scored["field_accuracy"] == pytest.approx([1.0, 2 / 3, 0.0, 0.0])


def test_field_accuracy_is_none_when_the_reference_is_not_an_object():
    (field_accuracy,) = reward_functions(["field_accuracy"], "json", "")
    assert field_accuracy([], ["[1, 2]"], answer=["[1, 2]"]) == [None]  # TRL reads None as "no score"


def test_answer_pattern_compares_the_extracted_answers():
    (exact,) = reward_functions(default_rewards("open_ended", r"#### (\S+)"), "open_ended", r"#### (\S+)")
    completions = ["3 + 4 is 7.\n#### 7", "It is 7, I think", "#### 8"]
    assert exact([], completions, answer=["Add them.\n#### 7"] * 3) == [1.0, 0.0, 0.0]


def test_free_text_matches_normalized_and_rouge_gives_a_dense_signal():
    assert default_rewards("open_ended") == ["rougeL"]
    rewards = rewards_by_name(["exact_match", "rougeL"], "open_ended")
    completions = ["  The capital of France is PARIS. ", "Paris is the capital", "Bananas."]
    answers = ["The capital of France is Paris."] * 3
    assert rewards["exact_match"]([], completions, answer=answers) == [1.0, 0.0, 0.0]
    rouge = rewards["rougeL"]([], completions, answer=answers)
    assert rouge[0] == pytest.approx(1.0) and 0.0 < rouge[1] < 1.0 and rouge[2] == 0.0


def test_tool_calls_in_a_generated_message_are_scored_as_evaluation_reads_them():
    answer = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    wrong_city = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    completions = [
        [{"role": "assistant", "content": "", "tool_calls": [call]}],  # parsed by the tokenizer's response schema
        chat(answer),  # left as text
        [{"role": "assistant", "content": None, "tool_calls": [wrong_city]}],
    ]
    rewards = rewards_by_name(default_rewards("tool_call"), "tool_call")
    assert rewards["exact_match"]([], completions, answer=[answer] * 3) == [1.0, 1.0, 0.0]
    assert rewards["tool_name_accuracy"]([], completions, answer=[answer] * 3) == [1.0, 1.0, 1.0]


def test_completion_text_reads_strings_messages_and_content_blocks():
    assert completion_text("plain") == "plain"
    assert completion_text(chat("hi")) == "hi"
    assert (
        completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]) == "a"
    )
    # After a tool loop the reply scored is the assistant's last one.
    turns = [chat("calling")[0], {"role": "tool", "content": "18C"}, chat("It is 18C.")[0]]
    assert completion_text(turns) == "It is 18C."


def test_default_rewards_per_task():
    assert default_rewards("json") == ["exact_match", "json_valid", "field_accuracy"]
    assert default_rewards("json", r"Answer: (.*)") == ["exact_match"]
    assert default_rewards("tool_call") == ["exact_match", "tool_name_accuracy"]
    for task in ("json", "open_ended", "tool_call"):
        for pattern in ("", "x"):
            assert reward_functions(default_rewards(task, pattern), task, pattern)  # every default applies


def test_each_reward_is_named_for_trl_logs():
    # TRL logs `rewards/<function name>/mean`: each built-in's function carries the built-in's name.
    for task in ("json", "open_ended", "tool_call"):
        names = [n for n, tasks in BUILTIN_REWARDS.items() if task in tasks]
        assert [f.__name__ for f in reward_functions(names, task, "")] == names


def test_a_user_reward_from_a_file_comes_after_the_built_ins(tmp_path):
    source = tmp_path / "my_rewards.py"
    source.write_text(
        "from dataclasses import dataclass\n\n"
        "@dataclass\nclass Limit:\n    chars: int = 80\n\n"
        "def short_answers(prompts, completions, **kwargs):\n"
        "    return [1.0 if len(c[0]['content']) <= Limit().chars else 0.0 for c in completions]\n"
    )
    functions = reward_functions(["exact_match"], "json", "", f"{source}:short_answers")
    assert [f.__name__ for f in functions] == ["exact_match", "short_answers"]
    assert functions[1]([], [chat(TICKET), chat("x" * 100)], answer=[TICKET] * 2) == [1.0, 0.0]


def test_a_user_reward_from_an_importable_module(tmp_path, monkeypatch):
    (tmp_path / "team_rewards.py").write_text(
        "def polite(prompts, completions, **kw):\n    return [0.5] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (polite,) = reward_functions([], "open_ended", "", "team_rewards:polite")
    assert polite([], ["a", "b"]) == [0.5, 0.5]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_colon_here", "expected 'module:function'"),
        ("{dir}/absent.py:reward", "no such file"),
        ("{dir}/rewards_file.py:missing", "has no function 'missing' (its functions: length_reward)"),
        ("{dir}/rewards_file.py:THRESHOLD", "is a float, not callable"),
        ("{dir}/broken.py:reward", "failed to import: ZeroDivisionError"),
        ("surely_not_a_module_xyz:reward", "module 'surely_not_a_module_xyz' is not importable"),
    ],
)
def test_a_bad_user_reward_is_refused_naming_the_setting(tmp_path, spec, says):
    (tmp_path / "rewards_file.py").write_text(
        "THRESHOLD = 0.5\n\ndef length_reward(prompts, completions, **kw):\n    return []\n"
    )
    (tmp_path / "broken.py").write_text("1 / 0\n")
    spec = spec.format(dir=tmp_path)
    with pytest.raises(ValueError) as refused:
        reward_functions(["exact_match"], "json", "", spec)
    assert "training.grpo.reward_function" in str(refused.value) and repr(spec) in str(refused.value)
    assert says in str(refused.value)


def test_a_user_reward_named_like_a_built_in_is_refused(tmp_path):
    (tmp_path / "clash.py").write_text("def exact_match(prompts, completions, **kw):\n    return []\n")
    with pytest.raises(ValueError, match="would be logged as one"):
        reward_functions(["exact_match"], "json", "", f"{tmp_path}/clash.py:exact_match")


def test_bad_reward_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown reward 'accuracy'; valid: exact_match, json_valid, field_accuracy"):
        reward_functions(["exact_match", "accuracy"], "json", "")
    with pytest.raises(ValueError, match=r"'json_valid' cannot score this data, whose answers are 'open_ended'"):
        reward_functions(["json_valid"], "open_ended", "")
    with pytest.raises(ValueError, match="named more than once"):
        reward_functions(["exact_match", "exact_match"], "json", "")
    with pytest.raises(ValueError, match="GRPO needs a reward"):
        reward_functions([], "json", "")


def test_a_dataset_without_the_answer_column_is_refused():
    (exact,) = reward_functions(["exact_match"], "json", "")
    with pytest.raises(ValueError, match="no 'answer' column"):
        exact([], [chat(TICKET)])
