"""SFT: supervised fine-tuning with TRL's SFTTrainer, loss on the assistant's tokens only.

    python -m assets.recipes.sft                                          # one process
    torchrun --standalone --nproc-per-node=N -m assets.recipes.sft        # N processes, DDP

Launched by `fine_tuned_model` through Dagster Pipes (`launch.py`), which sends the job (`RecipeJob`):
the `training` settings (`training.sft` and the shared ones), the weights to start from (the base
model), the checkpoint folder holding the examples (the train split's conversations, those marked
`validation` held back to choose the checkpoint kept and to stop early) and, when a killed
training left one, the checkpoint to resume from. Rank 0 saves the adapter and the merged model and
reports (`RecipeReport`).
"""

import pandas as pd

from assets.domain.chat import training_chat_template, training_tokens
from assets.domain.training import TrainingConfig, trainer_setup
from assets.domain.validation_slice import split_validation
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


def starting_model(models: ModelLoader, starts_from: str, setup, continue_adapter: str | None = None):
    """The model training starts from: the weights in `starts_from`, with the saved adapter in
    `continue_adapter` on them, trainable, when a warm start trains a champion's adapter on."""
    model = models.load_model(starts_from, **setup.model_kwargs)
    return models.with_adapter(model, continue_adapter, trainable=True) if continue_adapter else model


def train(config: TrainingConfig, starts_from: str, train: pd.DataFrame, models: ModelLoader, folder, resume,
          callback=None, continue_adapter: str | None = None) -> Trained:  # fmt: skip
    """Train `config.adapter` (or all weights) on the conversations in `train`, from the weights in
    `starts_from` (with the adapter in `continue_adapter` trained on, when given), checkpointing into
    `folder` and resuming from `resume` when a killed training left one. Rows marked `validation`
    (`with_validation`) are not trained on: the loss on them every `sft.eval_steps` picks the checkpoint
    kept (and stops training early with `sft.early_stopping_patience`)."""
    examples = train
    train, held = split_validation(examples)
    if config.sft.validates and held.empty:
        raise ValueError(
            f"training.sft.validation_fraction is {config.sft.validation_fraction}, but no example is marked for "
            "validation (column 'validation', set by assets.domain.validation_slice.with_validation)."
        )
    # Validation cut or left out every example longer than its max_tokens, so nothing is truncated here
    # (in the validation slice neither).
    max_length = int(examples["n_tokens"].max())
    # The stage has decided grouping already (the same answer again); callers of this function alone have not.
    config = with_length_grouping(config, [int(n) for n in train["n_tokens"]])
    # Refuses settings this device cannot run (qlora on a CPU) before any model loads.
    use_cpu, new_tokens = models.resolved_device() == "cpu", models.new_tokens(starts_from)
    setup = trainer_setup("sft", config, folder, use_cpu, max_length, new_tokens)
    tokenizer = models.load_tokenizer(starts_from)  # saved with the model: serving renders as the base did
    # SFTTrainer; batches bounded by max_batch_tokens where it binds, of similar length in random order when grouping
    trainer = sft_trainer_class()(
        model=starting_model(models, starts_from, setup, continue_adapter),
        args=setup.args,
        max_batch_tokens=setup.max_batch_tokens,
        train_dataset=training_dataset(tokenizer, train),
        eval_dataset=training_dataset(tokenizer, held) if config.sft.validates else None,
        processing_class=tokenizer,
        peft_config=None if continue_adapter else setup.peft,  # a continued adapter keeps its own shape
        callbacks=[*([callback] if callback is not None else []), *setup.callbacks] or None,
    )
    return train_timed(trainer, tokenizer, resume)


def train_and_save(job: RecipeJob, say, run) -> RecipeReport | None:
    """The job: train on the examples; rank 0 saves and reports (the other ranks return None)."""
    config, models = job.config, ModelLoader(**job.models)
    callback = live_tracking(run, say, config.sft.max_steps) if run is not None else None
    examples, adapter = read_examples(job.folder), job.options.get("continue_adapter")
    trained = train(config, job.starts_from, examples, models, job.folder, job.resume, callback, adapter)
    return report(trained, job, models) if rank() == 0 else None


if __name__ == "__main__":
    recipe_main(train_and_save)
