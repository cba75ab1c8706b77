"""Named presets: Dagster run config for the `finetune` job, one YAML file per preset.

Each file starts with a comment saying when to use it. Values not named in a preset keep the stage
config's default (the `cpu` preset).
"""

from pathlib import Path

import yaml

PRESETS_DIR = Path(__file__).parent


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"Unknown preset {name!r} (FT_PRESET). Available: {', '.join(available())}.")
    return yaml.safe_load(path.read_text()) or {}
