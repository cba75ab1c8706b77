"""DPO: preference training with TRL's DPOTrainer on (prompt, chosen, rejected) pairs.

    python -m assets.recipes.dpo                                          # one process
    torchrun --standalone --nproc-per-node=N -m assets.recipes.dpo        # N processes, DDP

Launched by `preference_tuned_model` through Dagster Pipes (`launch.py`), which sends the job
(`RecipeJob`): the `training` settings (`training.dpo` and the shared ones), the weights to start from
(the SFT stage's merged model for 'sft+dpo', the base model for 'dpo'), the checkpoint folder holding
the examples (the train split's preference pairs) and, when a killed training left one, the checkpoint
to resume from. The reference model DPO holds the policy to is the starting weights: with an adapter,
those weights with the adapter switched off; with 'full', a frozen copy TRL loads. Rank 0 saves the
adapter and the merged model and reports (`RecipeReport`, with the last reward accuracy and margin).
"""

import pandas as pd

from assets.domain.preferences import dpo_rows
from assets.domain.training import TrainingConfig, trainer_setup
from assets.recipes.job import RecipeJob, RecipeReport, Trained, rank, read_examples, recipe_main, report, train_timed
from resources.batch_order import dpo_trainer_class
from resources.models import ModelLoader
from resources.training_tracking import live_tracking

# DPOTrainer's logs -> the names they are tracked under (`dpo.<name>`): the share of pairs whose chosen reply
# the policy prefers more than its reference does, and the mean chosen-minus-rejected reward.
TRACKED = {
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
}
REPORTED = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin"}


def train(config: TrainingConfig, starts_from: str, pairs: pd.DataFrame, models: ModelLoader, folder, resume,
          callback=None) -> Trained:  # fmt: skip
    """DPO on `pairs` from the weights in `starts_from`, checkpointing into `folder` and resuming from
    `resume` when a killed training left one."""
    from datasets import Dataset

    # Refuses settings this device cannot run (qlora on a CPU) before any model loads. Tokens the base
    # model was given are trained here when DPO starts from the base (method dpo).
    setup = trainer_setup("dpo", config, folder, models.resolved_device() == "cpu", 0, models.new_tokens(starts_from))
    tokenizer = models.load_tokenizer(starts_from)
    trainer = dpo_trainer_class()(  # DPOTrainer; batches bounded by max_batch_tokens where it binds
        model=models.load_model(starts_from, **setup.model_kwargs),
        args=setup.args,
        max_batch_tokens=setup.max_batch_tokens,
        train_dataset=Dataset.from_list(dpo_rows(pairs, tokenizer)),
        processing_class=tokenizer,
        peft_config=setup.peft,
        callbacks=[callback] if callback is not None else None,
    )
    return train_timed(trainer, tokenizer, resume)


def train_and_save(job: RecipeJob, say, run) -> RecipeReport | None:
    """The job: train on the pairs; rank 0 saves and reports (the other ranks return None)."""
    config, models = job.config, ModelLoader(**job.models)
    callback = live_tracking(run, say, config.dpo.max_steps, "dpo", TRACKED) if run is not None else None
    trained = train(config, job.starts_from, read_examples(job.folder), models, job.folder, job.resume, callback)
    return report(trained, job, models, last=trained.last(REPORTED)) if rank() == 0 else None


if __name__ == "__main__":
    recipe_main(train_and_save)
