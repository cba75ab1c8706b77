"""Checkpoint folders per training setup, the setup key, and the progress a training reports."""

import os
import time

import pandas as pd

from assets.domain.training import TrainingConfig
from assets.recipes.launch import Recipe, setup_key
from resources.checkpoints import COMPLETE_MARKER, CheckpointStore
from resources.training_tracking import Progress, progress_line


def checkpoint(store: CheckpointStore, key: str, step: int, complete: bool = True):
    folder = store.folder(key) / f"checkpoint-{step}"
    folder.mkdir()
    if complete:
        (folder / COMPLETE_MARKER).write_text("{}")
    return folder


def test_the_newest_complete_checkpoint_is_resumed(tmp_path):
    store = CheckpointStore(root=str(tmp_path))
    assert store.last("sft-a") == (None, None)
    checkpoint(store, "sft-a", 10)
    newest = checkpoint(store, "sft-a", 20)
    checkpoint(store, "sft-a", 30, complete=False)  # killed while writing it
    (store.folder("sft-a") / "checkpoint-x").mkdir()
    assert store.last("sft-a") == (newest, 20)
    assert store.last("sft-b") == (None, None), "another setup never sees these"


def test_finishing_a_setup_drops_its_checkpoints_and_prunes_old_setups(tmp_path):
    store = CheckpointStore(root=str(tmp_path), keep_setups=2)
    for i, key in enumerate(["sft-old", "sft-older", "sft-recent", "sft-done"]):
        checkpoint(store, key, 10)
        os.utime(tmp_path / key, (time.time() - 100 * (4 - i),) * 2)
    os.utime(tmp_path / "sft-older", (time.time() - 1000,) * 2)
    assert sorted(store.finish("sft-done")) == ["sft-old", "sft-older"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft-recent"]


def key(method: str, config: TrainingConfig, data: str = "data-1", base: str = "/base", **options) -> str:
    return setup_key(Recipe(method, config, pd.DataFrame(), base, {"data": data, "base": base}, options))


def test_the_setup_key_follows_what_changes_the_result_only():
    config = TrainingConfig()
    sft = key("sft", config)
    assert sft == key("sft", TrainingConfig(logging_steps=1, save_steps=5, preset="x"))
    assert sft != key("sft", config, data="data-2"), "new data: a fresh folder"
    assert sft != key("sft", TrainingConfig(sft={"learning_rate": 1e-4})), "new config: a fresh folder"
    assert sft != key("sft", TrainingConfig(lora_r=8)), "a shared setting changes every method"
    assert sft != key("sft", config, base="/other-base")
    assert sft == key("sft", TrainingConfig(dpo={"beta": 0.5}, grpo={"beta": 0.5})), "other methods' sections"
    dpo = key("dpo", config)
    assert dpo != key("dpo", TrainingConfig(dpo={"beta": 0.5}))
    assert dpo == key("dpo", TrainingConfig(sft={"max_steps": 9}, grpo={"max_steps": 9}))
    grpo = key("grpo", config, task="json")
    assert grpo != key("grpo", config, task="open_ended"), "what the rewards score changes the result"
    assert (sft[:4], dpo[:4], grpo[:5]) == ("sft-", "dpo-", "grpo-")


def test_progress_reads_as_a_line_with_an_eta():
    now = [100.0]
    progress = Progress(start_step=10, clock=lambda: now[0])
    assert progress.eta(10, 50) is None
    now[0] = 120.0  # 20 s for 10 steps, 30 to go
    assert progress.eta(20, 50) == 60.0
    assert progress_line("train", 20, 50, 0.72514, 60.0) == "train step 20/50 (40%), loss 0.7251, ETA 1m00s"
    assert progress.tokens_per_second(1000) is None  # the first log only sets the mark
    now[0] = 122.0
    assert progress.tokens_per_second(1500) == 250.0
