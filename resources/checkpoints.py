"""Training checkpoints under FT_HOME/checkpoints: one folder per training setup, so a killed
training resumes where it stopped and two setups never share checkpoints.

A setup is named by a key the training stage computes from everything that decides the result
(settings, training data, base model, stage): the same key means the checkpoints in its folder
continue this very training; a changed config or data gives a new key and a fresh folder.

    folder = checkpoints.folder(key)              # Trainer output_dir; it writes checkpoint-<step>/
    resume = checkpoints.last(key)                # (path, step) of the newest complete checkpoint
    checkpoints.prune(keep=key)                   # old setups' folders beyond `keep_setups` go
"""

import re
import shutil
from pathlib import Path

import dagster as dg
from pydantic import Field

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files a checkpoint folder holds once the Trainer has finished writing it.
COMPLETE_MARKER = "trainer_state.json"


class CheckpointStore(dg.ConfigurableResource):
    """Checkpoint folders of training setups, newest kept, under `root`."""

    root: str = Field(description="Folder of all training checkpoints (FT_HOME/checkpoints).")
    keep_setups: int = Field(
        default=3, description="How many training setups keep their checkpoint folders (most recent first)."
    )

    def folder(self, key: str) -> Path:
        path = Path(self.root) / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def last(self, key: str) -> tuple[Path | None, int | None]:
        """The newest checkpoint of setup `key` that was written completely, and its step."""
        path = Path(self.root) / key
        steps = []
        for child in path.glob("checkpoint-*") if path.is_dir() else []:
            found = CHECKPOINT.match(child.name)
            if found and (child / COMPLETE_MARKER).is_file():
                steps.append((int(found.group(1)), child))
        if not steps:
            return None, None
        step, newest = max(steps)
        return newest, step

    def finish(self, key: str) -> list[str]:
        """A setup's training completed and its model is saved: drop its checkpoints (a later run of
        the same setup trains afresh and gets the same result), and prune other setups'."""
        shutil.rmtree(Path(self.root) / key, ignore_errors=True)
        return self.prune(keep=key)

    def prune(self, keep: str) -> list[str]:
        """Delete the folders of all but the `keep_setups` most recently used setups (never `keep`);
        returns the keys removed."""
        root = Path(self.root)
        if not root.is_dir():
            return []
        setups = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        others = [p for p in setups if p.name != keep]
        stale = others[max(self.keep_setups - 1, 0) :]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return [p.name for p in stale]
