"""The state folder: where assets write the files they hand downstream (models, reports)."""

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field


class StateStore(dg.ConfigurableResource):
    """Folders under FT_HOME, one per asset and Dagster run, written atomically."""

    home: str = Field(description="Absolute path of FT_HOME; artifacts go under <home>/artifacts.")

    def asset_dir(self, asset: str, run_id: str) -> Path:
        return Path(self.home) / "artifacts" / asset / run_id

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
