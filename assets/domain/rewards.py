"""Rewards for GRPO: what evaluation checks, as functions TRL's `GRPOTrainer` calls.

Each reward is `f(prompts, completions, answer, **kwargs) -> list[float | None]`, TRL's calling
convention: one float per completion, the dataset's other columns (here `answer`, the reference
reply) as keyword arguments. A completion is a string (plain prompts) or, for chat prompts, the
generated messages (`[{"role": "assistant", "content": ...}]`, tool calls as `tool_calls`). TRL logs
each reward under its function's name (`rewards/exact_match/mean`), so a built-in's function is
named after it.

The built-ins score with `metrics.score_answer`, the function evaluation uses, so training pushes
towards the figures the gate compares:

- `exact_match`: the answer `answer_pattern` extracts when one is set, JSON compared by value for
  JSON answers, tool calls by name and arguments, normalized text otherwise;
- `json_valid`: 1 when the completion parses as JSON (JSON answers only);
- `field_accuracy`: the share of the reference object's fields the completion gets right, 0 for a
  completion that is not a JSON object (JSON answers only; None for a reference that is no object);
- `tool_name_accuracy`: the share of expected tool calls naming the right tool (tool calls only);
- `rougeL`: ROUGE-L F-measure against the reference, a dense signal for free text.

A user's reward (`training.grpo.reward_function`) is a 'module:function' or '/path/file.py:function'
with the same convention, loaded by `load_user_reward`.

    rewards = reward_functions(default_rewards("json"), task="json", answer_pattern="")
    rewards[0]([], ['{"a": 1}'], answer=['{"a": 1}'])  # [1.0]
"""

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from assets.domain.metrics import score_answer
from assets.domain.tool_calls import reply_text

# Built-in reward -> the task types it applies to.
BUILTIN_REWARDS = {
    "exact_match": ("json", "open_ended", "tool_call"),
    "json_valid": ("json",),
    "field_accuracy": ("json",),
    "tool_name_accuracy": ("tool_call",),
    "rougeL": ("json", "open_ended", "tool_call"),
}
USER_REWARD_SETTING = "training.grpo.reward_function"
REWARDS_SETTING = "training.grpo.rewards"


def default_rewards(task: str, answer_pattern: str = "") -> list[str]:
    """The built-in rewards a run uses when the config names none: exact match wherever there is one
    right answer to match (an `answer_pattern`, JSON, tool calls), plus JSON validity and field accuracy
    for JSON answers, which give partial credit while exact matches are still rare. Free text without a
    pattern has no answer to match: ROUGE-L against the reference, evaluation's primary metric there."""
    if answer_pattern:
        return ["exact_match"]
    if task == "json":
        return ["exact_match", "json_valid", "field_accuracy"]
    if task == "tool_call":
        return ["exact_match", "tool_name_accuracy"]
    return ["rougeL"]


def completion_text(completion) -> str:
    """A completion as text: a string as it is; generated messages as the assistant's last reply, its
    tool calls written as `<tool_call>` blocks (`tool_calls.reply_text`, what evaluation reads)."""
    if isinstance(completion, str):
        return completion
    replies = [m for m in completion if m.get("role", "assistant") == "assistant"]
    if not replies:
        return ""
    message = replies[-1]
    content = message.get("content")
    if isinstance(content, list):  # content blocks: keep the text parts
        content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return reply_text({**message, "content": content})


def _builtin(name: str, task: str, answer_pattern: str) -> Callable:
    # JSON validity and field accuracy read the whole completion as JSON, whatever the pattern.
    scored_task, pattern = ("json", "") if name in ("json_valid", "field_accuracy") else (task, answer_pattern)

    def reward(prompts, completions, answer=None, **kwargs) -> list[float | None]:
        if answer is None:
            raise ValueError(f"Reward {name!r} needs the reference replies: the GRPO dataset has no 'answer' column.")
        scores = [score_answer(completion_text(c), a, scored_task, pattern) for c, a in zip(completions, answer)]
        return [s.get(name) for s in scores]

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = f"GRPO reward `{name}`: `metrics.score_answer`'s {name} against the `answer` column."
    return reward


def load_user_reward(spec: str) -> Callable:
    """The reward function `spec` names: 'package.module:function' (importable) or
    '/path/to/file.py:function'. Refused, naming the setting and what is wrong, when the module or
    file is missing, fails to import, or has no callable of that name."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ValueError(f"{USER_REWARD_SETTING}={spec!r}: expected 'module:function' or '/path/to/file.py:function'.")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise ValueError(f"{USER_REWARD_SETTING}={spec!r}: no such file {path}.")
        module_name = f"ft_user_reward_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        # Registered before it runs, as an import would be: dataclasses and pickle look a module up by name.
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise ValueError(f"{USER_REWARD_SETTING}={spec!r}: {path} failed to import: {error!r}") from error
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as error:
            raise ValueError(
                f"{USER_REWARD_SETTING}={spec!r}: module {where!r} is not importable ({error}); "
                "install it or name a file as '/path/to/file.py:function'."
            ) from error
        except Exception as error:
            raise ValueError(f"{USER_REWARD_SETTING}={spec!r}: module {where!r} failed to import: {error!r}") from error
    function = getattr(module, name, None)
    if function is None:
        defined = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise ValueError(
            f"{USER_REWARD_SETTING}={spec!r}: {where} has no function {name!r} "
            f"(its functions: {', '.join(defined) or 'none'})."
        )
    if not callable(function):
        raise ValueError(
            f"{USER_REWARD_SETTING}={spec!r}: {name!r} in {where} is a {type(function).__name__}, not callable."
        )
    return function


def reward_functions(names: list[str], task: str, answer_pattern: str, user_function: str = "") -> list[Callable]:
    """The reward functions for a run, in order: the built-ins `names` (for `task`, the data's task type,
    and its `answer_pattern`), then the user's `user_function` when set. Refused: an unknown name (the
    valid ones listed), a built-in that does not apply to the task, a name twice, and no reward at all."""
    unknown = [n for n in names if n not in BUILTIN_REWARDS]
    if unknown:
        raise ValueError(
            f"{REWARDS_SETTING}: unknown reward {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(BUILTIN_REWARDS)} (a reward of your own goes in {USER_REWARD_SETTING})."
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{REWARDS_SETTING}: {', '.join(map(repr, repeated))} named more than once.")
    misplaced = [n for n in names if task not in BUILTIN_REWARDS[n]]
    if misplaced:
        raise ValueError(
            f"{REWARDS_SETTING}: {', '.join(map(repr, misplaced))} cannot score this data, whose answers are "
            f"{task!r}; rewards that apply: {', '.join(n for n, tasks in BUILTIN_REWARDS.items() if task in tasks)}."
        )
    functions = [_builtin(n, task, answer_pattern) for n in names]
    if user_function:
        user = load_user_reward(user_function)
        if getattr(user, "__name__", None) in names:
            raise ValueError(
                f"{USER_REWARD_SETTING}={user_function!r}: its name {user.__name__!r} is a built-in reward's "
                "and the two would be logged as one; rename the function."
            )
        functions.append(user)
    if not functions:
        raise ValueError(f"GRPO needs a reward: name built-ins in {REWARDS_SETTING} or set {USER_REWARD_SETTING}.")
    return functions
