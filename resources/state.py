"""The state folder: where assets write the files they hand downstream (models, reports)."""

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field


class StateStore(dg.ConfigurableResource):
    """Folders and files under FT_HOME, one per asset and Dagster run, written atomically."""

    home: str = Field(description="Absolute path of FT_HOME; artifacts go under `FT_HOME/artifacts`.")

    def asset_dir(self, asset: str, run_id: str) -> Path:
        return Path(self.home) / "artifacts" / asset / run_id

    def dataset_path(self, asset: str, partition: str | None, run_id: str) -> Path:
        """Where one run writes an asset's rows (a Parquet file). Older runs' files of the same asset
        and partition are pruned to the latest one: downstream only ever reads the latest
        materialization, and the one before it may still be in use by a run that started earlier."""
        folder = Path(self.home) / "datasets" / asset / (partition or "all")
        if folder.is_dir():
            older = sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime)
            for stale in older[:-1]:
                stale.unlink(missing_ok=True)
        return folder / f"{run_id}.parquet"

    def scratch_dir(self) -> Path:
        """A folder under FT_HOME for a step's temporary files (use with tempfile.TemporaryDirectory)."""
        path = Path(self.home) / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def atomic_dir(self, final: Path) -> Iterator[Path]:
        """Yield a scratch folder that becomes `final` only if the block finishes without error.

        A crash mid-write leaves no half-written folder at `final` for a later step to trust.
        """
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
        try:
            yield scratch
            if final.exists():
                shutil.rmtree(final)
            scratch.rename(final)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
