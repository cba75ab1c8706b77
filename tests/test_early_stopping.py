"""SFT's validation slice: held back from the train split by a hash of example_id (stable, never of row
order), its loss every eval_steps, early stopping with patience, and the checkpoint of the lowest
validation loss saved as the model (not the last step's), which save_total_limit never deletes.
Trained on the tiny Llama, whose validation examples are unlike its train examples, so the validation
loss rises as it trains and early stopping must stop it."""

import json
import random
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from assets.domain.training import TrainingConfig, trainer_setup
from assets.domain.validation_slice import split_validation, validation_rows, with_validation
from assets.recipes import sft
from assets.recipes.job import RecipeJob, RecipeReport, report
from resources.models import ModelLoader
from resources.training_tracking import VALIDATION_LOSS, live_tracking, validation_line

MAX_STEPS, EVAL_STEPS, PATIENCE = 30, 2, 2


def conversation(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def examples() -> pd.DataFrame:
    """8 train examples of one answer and 4 validation examples of another: learning the first
    makes the second less likely, so the validation loss rises after the first validations."""
    train = [conversation(f"List fruit {i}", "apple banana cherry grape lemon mango apple banana") for i in range(8)]
    held = [conversation(f"Count {i}", "one two three four five six seven eight") for i in range(4)]
    return pd.DataFrame(
        {
            "messages": train + held,
            "n_tokens": [128] * 12,
            "example_id": [f"id-{i}" for i in range(12)],
            "validation": [False] * 8 + [True] * 4,
        }
    )


def settings(**sft) -> TrainingConfig:
    # keep_checkpoints 2: by the time patience runs out, the best checkpoint is older than the two newest,
    # so rotation would delete it if transformers did not keep it.
    return TrainingConfig(
        precision="fp32", logging_steps=1, save_steps=0, keep_checkpoints=2,
        sft={"max_steps": MAX_STEPS, "per_device_train_batch_size": 4, "warmup_steps": 0, "learning_rate": 5e-2,
             "validation_fraction": 0.3, "eval_steps": EVAL_STEPS, "early_stopping_patience": PATIENCE, **sft},
    )  # fmt: skip


def loader() -> ModelLoader:
    return ModelLoader(base_model="unused", device="cpu")


def job(folder: Path, starts_from: str) -> RecipeJob:
    """What a recipe's job is told, as far as saving reads it."""
    return RecipeJob({}, starts_from, str(folder), None, None, str(folder / "out"), str(folder), {}, {}, "")


class RecordedRun:
    """Stands in for the MLflow run `live_tracking` reports to: keeps what it is sent."""

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))


class Stopped:
    """One early-stopped training, with what its live callback sent and its saved report."""

    def __init__(self, tiny_model_dir: Path, examples: pd.DataFrame, folder: Path):
        self.folder, self.tracked, self.lines = folder, RecordedRun(), []
        callback = live_tracking(self.tracked, self.lines.append, MAX_STEPS)
        self.run = sft.train(settings(), str(tiny_model_dir), examples, loader(), folder / "ckpt", None, callback)
        self.report = report(self.run, job(folder, str(tiny_model_dir)), loader())


@pytest.fixture(scope="module")
def stopped(tiny_model_dir, examples, tmp_path_factory) -> Stopped:
    return Stopped(tiny_model_dir, examples, tmp_path_factory.mktemp("stopped"))


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def test_early_stopping_stops_before_max_steps_and_keeps_the_best_checkpoint(stopped):
    run, reported = stopped.run, stopped.report
    curve = reported.validation_curve
    assert [step for step, _ in curve] == list(range(EVAL_STEPS, reported.steps + 1, EVAL_STEPS))
    assert reported.stopped_early and reported.steps < MAX_STEPS, "the validation loss rose: training must stop"
    best_step, best_loss = min(curve, key=lambda point: point[1])
    assert (reported.best_step, reported.best_validation_loss) == (best_step, pytest.approx(best_loss))
    assert reported.steps == best_step + PATIENCE * EVAL_STEPS, (
        "stopped after `patience` validations without improvement"
    )
    checkpoints = stopped.folder / "ckpt"
    best, last = checkpoints / f"checkpoint-{best_step}", checkpoints / f"checkpoint-{reported.steps}"
    assert best.is_dir() and last.is_dir(), "save_total_limit kept the best checkpoint besides the newest"
    saved = adapter_weights(Path(reported.adapter_dir))
    assert saved.keys() == adapter_weights(best).keys()
    assert all(torch.equal(saved[k], t) for k, t in adapter_weights(best).items()), "the best checkpoint is saved"
    assert not all(torch.equal(saved[k], t) for k, t in adapter_weights(last).items()), "not the last step's"
    # what trained: the 8 train rows; the 4 validation rows only measured
    assert len(run.trainer.train_dataset) == 8 and len(run.trainer.eval_dataset) == 4


def test_the_validation_loss_goes_to_the_mlflow_run_as_it_is_computed(stopped):
    logged = [(step, m[VALIDATION_LOSS]) for step, m in stopped.tracked.logged if VALIDATION_LOSS in m]
    assert logged == [(step, pytest.approx(loss)) for step, loss in stopped.report.validation_curve]
    validations = [line for line in stopped.lines if line.startswith("validation at step")]
    assert len(validations) == len(logged) and validations[0].startswith(f"validation at step {EVAL_STEPS}/{MAX_STEPS}")
    assert validation_line(4, 10, 0.9, 0.8) == "validation at step 4/10: loss 0.9000 (best so far 0.8000)"
    assert validation_line(4, 10, 0.7, 0.8) == "validation at step 4/10: loss 0.7000 (best so far)"


def test_the_report_carries_the_validation_figures_through_pipes(stopped):
    message = json.loads(json.dumps(asdict(stopped.report)))  # what crosses Dagster Pipes
    assert RecipeReport.from_message(message) == stopped.report
    old = {k: v for k, v in message.items() if k not in ("validation_curve", "best_step", "best_validation_loss")}
    assert RecipeReport.from_message({**old, "stopped_early": False}).validation_curve == ()


def test_validation_batches_stay_within_the_token_budget(stopped):
    trainer = stopped.run.trainer
    lengths = [len(ids) for ids in trainer.eval_dataset["input_ids"]]
    trainer.max_batch_tokens = 2 * max(lengths)  # binds for batches of 4: two rows a batch
    batches = list(trainer.get_eval_dataloader())
    assert sum(len(b["input_ids"]) for b in batches) == 4
    assert all(b["input_ids"].numel() <= trainer.max_batch_tokens for b in batches) and len(batches) == 2


def test_a_resumed_training_stops_where_the_uninterrupted_one_did(stopped, tiny_model_dir, examples, tmp_path):
    """The early-stopping counter is restored from the checkpoint (restore_callback_states_from_checkpoint):
    a training killed after a validation without improvement stops at the same step, with the same model."""

    class Killed(Exception):
        pass

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == stopped.report.best_step + EVAL_STEPS:
                raise Killed

    folder = tmp_path / "ckpt"
    with pytest.raises(Killed):
        sft.train(settings(), str(tiny_model_dir), examples, loader(), folder, None, KillAfterSave())
    resume = folder / f"checkpoint-{stopped.report.best_step + EVAL_STEPS}"
    run = sft.train(settings(), str(tiny_model_dir), examples, loader(), folder, resume)
    resumed = report(run, job(tmp_path, str(tiny_model_dir)), loader())
    assert (resumed.steps, resumed.best_step, resumed.stopped_early) == (
        stopped.report.steps,
        stopped.report.best_step,
        True,
    )
    saved, uninterrupted = adapter_weights(Path(resumed.adapter_dir)), adapter_weights(Path(stopped.report.adapter_dir))
    assert saved.keys() == uninterrupted.keys() and all(torch.equal(saved[n], t) for n, t in uninterrupted.items())


# ---- the validation slice, by hash ------------------------------------------------------------------


def test_validation_rows_are_chosen_by_hash_of_example_id_not_row_order():
    ids = [f"prompt-{i}" for i in range(1000)]
    chosen = dict(zip(ids, validation_rows(ids, 0.2, seed=0)))
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert dict(zip(shuffled, validation_rows(shuffled, 0.2, seed=0))) == chosen, "stable under shuffling"
    assert 150 <= sum(chosen.values()) <= 250, "about the fraction"
    assert validation_rows(ids, 0.2, seed=1) != list(chosen.values()), "another seed, another slice"
    assert validation_rows(ids, 0.0, seed=0) == [False] * 1000
    twice = ["a", "b", "a", "c", "b"] * 20
    rows = validation_rows(twice, 0.5, seed=0)
    assert all(rows[i] == rows[twice.index(t)] for i, t in enumerate(twice)), "a prompt's rows stay together"


@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
def test_a_validation_slice_holds_at_least_one_prompt_and_trains_at_least_one(fraction):
    for n in (2, 3, 5):
        rows = validation_rows([f"p{i}" for i in range(n)], fraction, seed=0)
        assert 1 <= sum(rows) <= n - 1, (n, fraction, rows)


def test_with_validation_marks_the_examples_and_the_recipe_splits_by_the_mark():
    frame = pd.DataFrame({"example_id": [f"p{i}" for i in range(40)], "n_tokens": range(40)})
    off = with_validation(frame, TrainingConfig())
    assert not off["validation"].any() and len(split_validation(off)[0]) == 40
    on = with_validation(frame, TrainingConfig(sft={"validation_fraction": 0.25}))
    fit, held = split_validation(on)
    assert len(fit) + len(held) == 40 and 1 <= len(held) < 20
    assert set(held["example_id"]) == set(on.loc[on["validation"], "example_id"])
    reordered = with_validation(frame.sample(frac=1, random_state=3), TrainingConfig(sft={"validation_fraction": 0.25}))
    assert set(reordered.loc[reordered["validation"], "example_id"]) == set(held["example_id"])
    with pytest.raises(ValueError, match="at least 2"):
        with_validation(frame.assign(example_id="same"), TrainingConfig(sft={"validation_fraction": 0.25}))


# ---- the settings -------------------------------------------------------------------------------------


def test_early_stopping_without_validation_is_refused_by_name():
    with pytest.raises(ValueError, match="early_stopping_patience is 3.*validation_fraction is 0"):
        TrainingConfig(sft={"early_stopping_patience": 3})
    assert TrainingConfig(sft={"early_stopping_patience": 3, "validation_fraction": 0.1}).sft.validates


def test_validation_maps_to_transformers_best_model_and_early_stopping(tmp_path):
    off = trainer_setup("sft", TrainingConfig(precision="fp32"), tmp_path, True, max_length=64)
    assert off.args.eval_strategy == "no" and not off.args.load_best_model_at_end and off.callbacks == ()
    config = TrainingConfig(
        precision="fp32", save_steps=0, sft={"validation_fraction": 0.1, "eval_steps": 5, "early_stopping_patience": 2}
    )
    setup = trainer_setup("sft", config, tmp_path, True, max_length=64)
    args = setup.args
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == ("steps", 5, "steps", 5), (
        "a checkpoint at every validation, even with save_steps 0: the best one is loaded from its checkpoint"
    )
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss" and not args.greater_is_better
    (callback,) = setup.callbacks
    assert type(callback).__name__ == "EarlyStoppingCallback" and callback.early_stopping_patience == 2
    validating = config.with_sft(early_stopping_patience=0)
    assert trainer_setup("sft", validating, tmp_path, True, max_length=64).callbacks == ()
    for stage in ("dpo", "grpo"):
        assert trainer_setup(stage, config, tmp_path, True).callbacks == ()


def test_the_registration_states_the_best_step_and_validation_loss():
    from tests.test_metrics_and_gate import lineage

    record = lineage()
    assert "validation.best_loss" not in record.mlflow_metrics() and "train.best_step" not in record.mlflow_params()
    trained = replace(record.trained, best_step=20, best_validation_loss=0.75, stopped_early=True)
    record = replace(record, trained=trained)
    assert record.mlflow_metrics()["validation.best_loss"] == 0.75
    assert (record.mlflow_params()["train.best_step"], record.mlflow_params()["train.stopped_early"]) == ("20", "True")
