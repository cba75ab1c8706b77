"""The landing folder: where raw data files arrive. Read-only: nothing here writes, moves or deletes."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

SUPPORTED_SUFFIXES = (".jsonl", ".csv")


@dataclass(frozen=True)
class LandingFile:
    path: Path
    """Absolute path of the file."""
    name: str
    """Path relative to the landing folder, as shown in errors and lineage."""
    drop: str
    """The data drop the file belongs to: its dated sub-folder, or its own name at the top level."""


class LandingZone(dg.ConfigurableResource):
    """A local folder of raw data files, each file or dated sub-folder one data drop."""

    path: str = Field(description="Folder holding the raw files (FT_LANDING_DIR).")

    def files(self) -> list[LandingFile]:
        """Every supported data file under the folder, in a stable order (by relative path)."""
        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"Landing folder {root} does not exist. Set FT_LANDING_DIR to the folder holding your "
                "raw data files, or unset it to use the bundled sample data."
            )
        found = []
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in SUPPORTED_SUFFIXES and not path.name.startswith("."):
                rel = path.relative_to(root)
                drop = rel.parts[0] if len(rel.parts) > 1 else rel.name
                found.append(LandingFile(path=path, name=rel.as_posix(), drop=drop))
        if not found:
            raise FileNotFoundError(
                f"Landing folder {root} holds no data files ({', '.join(SUPPORTED_SUFFIXES)}). "
                "Put your raw files there, one file or dated sub-folder per data drop."
            )
        return found

    def read_text(self, file: LandingFile) -> str:
        return file.path.read_text(encoding="utf-8")
