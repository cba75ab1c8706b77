"""GRPO: online reinforcement learning with verifiable rewards, with TRL's GRPOTrainer.

    python -m assets.recipes.grpo                                         # one process
    torchrun --standalone --nproc-per-node=N -m assets.recipes.grpo       # N processes, DDP

Launched by `preference_tuned_model` through Dagster Pipes (`launch.py`), which sends the job
(`RecipeJob`): the `training` settings (`training.grpo` and the shared ones), the weights to start from
(the SFT stage's merged model for 'sft+grpo', the base model for 'grpo'), the checkpoint folder
holding the examples (the train split's conversations) and, in its options, the task (json, tool_call
or open_ended, as evaluation reads the answers) and evaluation's answer pattern.

Each step samples `grpo.num_generations` answers to each of its prompts, scores every answer with the
rewards (`assets/domain/rewards.py`: what evaluation checks, exact match, JSON validity and field
accuracy, plus the user's own function), and moves the policy towards the answers that scored above
their group's mean, held near the starting weights by a KL penalty (`grpo.beta`). A prompt is the
conversation before its final answer, rendered as evaluation renders it (`chat.prompt_text`), so the
model is rewarded for what it will be scored on; the final answer is the reference the rewards compare with.
Rank 0 saves the adapter and the merged model and reports (`RecipeReport`: the reward and KL curves).
"""

import pandas as pd

from assets.domain.chat import prompt_text
from assets.domain.evaluation import generation_budget
from assets.domain.rewards import default_rewards, reward_functions
from assets.domain.tool_calls import reply_text
from assets.domain.training import TrainingConfig, trainer_setup
from assets.recipes.job import RecipeJob, RecipeReport, Trained, rank, read_examples, recipe_main, report, train_timed
from resources.models import ModelLoader
from resources.training_tracking import live_tracking

# GRPOTrainer's logs -> the names they are tracked under (`grpo.<name>`), beside each reward's mean
# (`rewards/<name>/mean` -> `grpo.reward.<name>`, added per run).
TRACKED = {
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "reward": "reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",
}
REPORTED = {"reward": "reward", "kl": "kl", "reward_std": "reward_std"}
# The most tokens an auto `grpo.max_completion_length` allows (evaluation's default cap).
AUTO_COMPLETION_CAP = 256


def prompt_for(tokenizer, text: str) -> str:
    """A rendered prompt as GRPOTrainer tokenizes it (with the tokenizer's special tokens): without the
    BOS the template wrote when the tokenizer adds one itself, so the model sees the prompt once, as in evaluation."""
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos) :] if adds_bos and text.startswith(bos) else text


def grpo_rows(tokenizer, examples: pd.DataFrame) -> list[dict]:
    """The examples as GRPOTrainer reads them: `prompt` (the conversation before its final answer,
    rendered with its tools as evaluation renders it) and `answer` (that final answer, the reference
    the rewards compare with)."""
    tools = examples["tools"] if "tools" in examples else [None] * len(examples)
    return [
        {"prompt": prompt_for(tokenizer, prompt_text(tokenizer, list(m), t)), "answer": reply_text(m[-1])}
        for m, t in zip(examples["messages"], tools)
    ]


def with_completion_budget(config: TrainingConfig, tokenizer, answers: list[str]) -> TrainingConfig:
    """`grpo.max_completion_length` as it samples: when 0 (auto), evaluation's budget for these answers."""
    if config.grpo.max_completion_length:
        return config
    budget = generation_budget(tokenizer, answers, AUTO_COMPLETION_CAP)
    return config.model_copy(update={"grpo": config.grpo.model_copy(update={"max_completion_length": budget})})


def rewards(config: TrainingConfig, options: dict) -> list:
    """The reward functions: `grpo.rewards` (or the task's), and `grpo.reward_function` when named."""
    grpo, task, pattern = config.grpo, options["task"], options.get("answer_pattern", "")
    names = list(grpo.rewards) or default_rewards(task, pattern)
    return reward_functions(names, task, pattern, grpo.reward_function)


def train(config: TrainingConfig, starts_from: str, examples: pd.DataFrame, models: ModelLoader, folder, resume,
          funcs: list, callback=None) -> Trained:  # fmt: skip
    """GRPO on the prompts of `examples` from the weights in `starts_from`, scored by the reward
    functions `funcs`, checkpointing into `folder` and resuming from `resume` when a killed training left one."""
    from datasets import Dataset
    from trl import GRPOTrainer

    tokenizer = models.load_tokenizer(starts_from)
    rows = grpo_rows(tokenizer, examples)
    config = with_completion_budget(config, tokenizer, [row["answer"] for row in rows])
    setup = trainer_setup("grpo", config, folder, models.resolved_device() == "cpu", 0, models.new_tokens(starts_from))
    trainer = GRPOTrainer(
        model=models.load_model(starts_from, **setup.model_kwargs),
        reward_funcs=funcs,
        args=setup.args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=setup.peft,
        callbacks=[callback] if callback is not None else None,
    )
    return train_timed(trainer, tokenizer, resume)


def tracked(funcs: list) -> dict[str, str]:
    """The logs tracked live: TRACKED, and each reward's mean under its function's name."""
    return TRACKED | {f"rewards/{f.__name__}/mean": f"reward.{f.__name__}" for f in funcs}


def train_and_save(job: RecipeJob, say, run) -> RecipeReport | None:
    """The job: sample, score and learn; rank 0 saves and reports (the other ranks return None)."""
    config, models = job.config, ModelLoader(**job.models)
    funcs = rewards(config, job.options)  # a user function that cannot be imported is refused before any model loads
    callback = live_tracking(run, say, config.grpo.max_steps, "grpo", tracked(funcs)) if run is not None else None
    trained = train(config, job.starts_from, read_examples(job.folder), models, job.folder, job.resume,
                    funcs, callback)  # fmt: skip
    if rank() != 0:
        return None
    curves = {"reward": trained.curve("reward"), "reward_std": trained.curve("reward_std")}
    return report(trained, job, models, last=trained.last(REPORTED), curves=curves)


if __name__ == "__main__":
    recipe_main(train_and_save)
