"""The landing location: where raw data files arrive. Read-only: nothing here writes, moves or deletes.

A local folder by default; any fsspec URL (s3://, gs://, https://, file://, hf://datasets/...) works
the same way when its driver is installed. Credentials come from the driver's own environment
variables or config files (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN), never from here.
"""

import gzip
from dataclasses import dataclass
from typing import IO

import dagster as dg
from pydantic import Field

# The one list of data file types: the landing lists only these, and raw_records refuses to load
# unless it has a reader for each.
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def data_suffix(name: str) -> str | None:
    """The data type of a file name ('.jsonl', ...), looking through one '.gz', or None."""
    base = name[:-3] if name.endswith(".gz") else name
    return next((s for s in DATA_SUFFIXES if base.endswith(s)), None)


@dataclass(frozen=True)
class LandingFile:
    path: str
    """Full path or URL of the file, as the filesystem knows it."""
    name: str
    """Path relative to the landing location, as shown in errors and lineage."""
    drop: str
    """The data drop the file belongs to: its dated sub-folder, or its own name at the top level."""

    @property
    def suffix(self) -> str:
        return data_suffix(self.name) or ""

    @property
    def compressed(self) -> bool:
        return self.name.endswith(".gz")


class LandingZone(dg.ConfigurableResource):
    """A folder or fsspec URL of raw data files, each file or dated sub-folder one data drop."""

    path: str = Field(description="Folder or fsspec URL holding the raw files (FT_LANDING_DIR).")

    def _fs(self):
        from fsspec.core import url_to_fs

        return url_to_fs(self.path)

    def files(self) -> list[LandingFile]:
        """Every data file under the location, in a stable order (by relative path)."""
        fs, root = self._fs()
        if not fs.isdir(root):
            raise FileNotFoundError(
                f"Landing location {self.path} does not exist or is not a folder. Set FT_LANDING_DIR to "
                "the folder (or fsspec URL) holding your raw data files, or unset it for the sample data."
            )
        root = root.rstrip("/")
        found = []
        for full in sorted(fs.find(root)):
            rel = full[len(root) :].lstrip("/")
            parts = rel.split("/")
            if data_suffix(rel) and not any(p.startswith(".") for p in parts):
                found.append(LandingFile(path=full, name=rel, drop=parts[0] if len(parts) > 1 else rel))
        if not found:
            raise FileNotFoundError(
                f"Landing location {self.path} holds no data files ({', '.join(DATA_SUFFIXES)}, "
                "optionally .gz). Put your raw files there, one file or dated sub-folder per data drop."
            )
        return found

    def fingerprint(self, file: LandingFile) -> str:
        """sha256 of the file's bytes as stored (compressed files are not decompressed)."""
        import hashlib

        fs, _ = self._fs()
        digest = hashlib.sha256()
        with fs.open(file.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def open(self, file: LandingFile) -> IO[bytes]:
        """The file's bytes, decompressed when it ends in .gz. Opened read-only."""
        fs, _ = self._fs()
        raw = fs.open(file.path, "rb")
        return gzip.GzipFile(fileobj=raw, mode="rb") if file.compressed else raw
