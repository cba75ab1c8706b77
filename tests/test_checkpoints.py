"""Checkpoint folders per training setup, the setup key, and the progress a training reports."""

import os
import time

from assets.fine_tuned_model import TrainingConfig, setup_key
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


def test_the_setup_key_follows_what_changes_the_result_only():
    config = TrainingConfig()
    key = setup_key(config, "data-1", "/base")
    assert key == setup_key(TrainingConfig(logging_steps=1, save_steps=5, preset="x"), "data-1", "/base")
    assert key != setup_key(config, "data-2", "/base"), "new data: a fresh folder"
    assert key != setup_key(TrainingConfig(learning_rate=1e-4), "data-1", "/base"), "new config: a fresh folder"
    assert key != setup_key(config, "data-1", "/other-base")
    assert key == setup_key(TrainingConfig(dpo_beta=0.5, dpo_max_steps=9), "data-1", "/base"), "DPO settings: same SFT"
    dpo = setup_key(config, "data-1", "/base", stage="dpo")
    assert dpo != setup_key(TrainingConfig(dpo_beta=0.5), "data-1", "/base", stage="dpo")
    assert key.startswith("sft-") and setup_key(config, "data-1", "/base", stage="dpo").startswith("dpo-")


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
