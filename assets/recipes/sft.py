"""SFT: supervised fine-tuning with TRL's SFTTrainer, loss on the assistant's tokens only.

    python -m assets.recipes.sft                                          # one process
    torchrun --standalone --nproc-per-node=N -m assets.recipes.sft        # N processes, DDP

Launched by `fine_tuned_model` through Dagster Pipes (`launch.py`), which sends the job (`RecipeJob`):
the `training` settings (`training.sft` and the shared ones), the weights to start from (the base
model), the checkpoint folder holding the examples (the train split's conversations) and, when a killed
training left one, the checkpoint to resume from. Rank 0 saves the adapter and the merged model and
reports (`RecipeReport`).
"""

import pandas as pd

from assets.domain.chat import training_chat_template, training_tokens
from assets.domain.training import TrainingConfig, trainer_setup
from assets.recipes.job import RecipeJob, RecipeReport, Trained, rank, read_examples, recipe_main, report, train_timed
from resources.batch_order import grouping_pays, sft_trainer_class
from resources.models import ModelLoader
from resources.training_tracking import live_tracking


def training_dataset(tokenizer, train: pd.DataFrame):
    """The examples as TRL trains on them: each conversation's `input_ids` and `assistant_masks`,
    rendered with tools and turn weights the way validation measured it (`training_tokens`), by a
    training template that marks the assistant's tokens (loss on those only)."""
    from datasets import Dataset

    template = training_chat_template(tokenizer) or tokenizer.chat_template
    tools = train["tools"] if "tools" in train else [None] * len(train)
    return Dataset.from_list([training_tokens(tokenizer, m, t, template) for m, t in zip(train["messages"], tools)])


def with_length_grouping(config: TrainingConfig, lengths: list[int]) -> TrainingConfig:
    """The settings with `sft.group_by_length` as it trains: on only where random batches of these
    examples would be more than `sft.group_by_length_min_padding` padding (resources/batch_order.py)."""
    sft = config.sft
    if not sft.group_by_length:
        return config
    pays = grouping_pays(lengths, sft.per_device_train_batch_size, config.max_batch_tokens, config.seed,
                         sft.group_by_length_min_padding)  # fmt: skip
    return config.with_sft(group_by_length=pays)


def train(config: TrainingConfig, starts_from: str, train: pd.DataFrame, models: ModelLoader, folder, resume,
          callback=None) -> Trained:  # fmt: skip
    """Train `config.adapter` (or all weights) on the conversations in `train`, from the weights in
    `starts_from`, checkpointing into `folder` and resuming from `resume` when a killed training left one."""
    # Validation cut or left out every example longer than its max_tokens, so nothing is truncated here.
    max_length = int(train["n_tokens"].max())
    # The stage has decided grouping already (the same answer again); callers of this function alone have not.
    config = with_length_grouping(config, [int(n) for n in train["n_tokens"]])
    # Refuses settings this device cannot run (qlora on a CPU) before any model loads.
    use_cpu, new_tokens = models.resolved_device() == "cpu", models.new_tokens(starts_from)
    setup = trainer_setup("sft", config, folder, use_cpu, max_length, new_tokens)
    tokenizer = models.load_tokenizer(starts_from)  # saved with the model: serving renders as the base did
    # SFTTrainer; batches bounded by max_batch_tokens where it binds, of similar length in random order when grouping
    trainer = sft_trainer_class()(
        model=models.load_model(starts_from, **setup.model_kwargs),
        args=setup.args,
        max_batch_tokens=setup.max_batch_tokens,
        train_dataset=training_dataset(tokenizer, train),
        processing_class=tokenizer,
        peft_config=setup.peft,
        callbacks=[callback] if callback is not None else None,
    )
    return train_timed(trainer, tokenizer, resume)


def train_and_save(job: RecipeJob, say, run) -> RecipeReport | None:
    """The job: train on the examples; rank 0 saves and reports (the other ranks return None)."""
    config, models = job.config, ModelLoader(**job.models)
    callback = live_tracking(run, say, config.sft.max_steps) if run is not None else None
    trained = train(config, job.starts_from, read_examples(job.folder), models, job.folder, job.resume, callback)
    return report(trained, job, models) if rank() == 0 else None


if __name__ == "__main__":
    recipe_main(train_and_save)
