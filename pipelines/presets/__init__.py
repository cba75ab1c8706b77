"""Named presets: the settings of every stage, one YAML file per preset.

Each file starts with a comment saying when to use it, then one section per stage (`ingest`,
`validation`, `split`, `training`, `evaluation`, `gate`). Values a preset does not name keep the
stage's default, which is the `cpu` preset. The stage settings are Dagster resources, so every run
uses the preset, whether launched by `make run`, the UI, the sensor, the schedule or automation.
FT_PRESET may also be the path of a YAML file of your own (`FT_PRESET=./my-preset.yaml`).
The Launchpad can set a stage's settings for one run (under `resources`); that replaces the stage's
whole section, so name every value that should differ from the stage's defaults.
"""

from pathlib import Path

import yaml

from assets.fine_tuned_model import TrainingConfig
from assets.instruction_pairs import SplitConfig
from assets.model_evaluation import EvaluationConfig
from assets.raw_records import IngestConfig
from assets.validated_records import ValidationConfig
from data_checks.promotion_gate import GateConfig

PRESETS_DIR = Path(__file__).parent
STAGES = {
    "ingest": IngestConfig,
    "validation": ValidationConfig,
    "split": SplitConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "gate": GateConfig,
}


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """A preset by name (a file in this folder) or by path (a YAML file of your own)."""
    if name.endswith((".yaml", ".yml")):
        return Path(name).expanduser().resolve()
    return PRESETS_DIR / f"{name}.yaml"


def preset_name(name: str) -> str:
    """How a run names its preset: the bundled preset's name, or your file's stem."""
    return preset_path(name).stem


def load_preset(name: str) -> dict[str, dict]:
    path = preset_path(name)
    if not path.is_file():
        raise ValueError(
            f"Unknown preset {name!r} (FT_PRESET). Available: {', '.join(available())}, or the path of a "
            "YAML file of your own with the same sections."
        )
    values = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(values) - set(STAGES))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {', '.join(unknown)}; sections are {', '.join(STAGES)}.")
    return values


def stage_resources(name: str, overrides: dict[str, dict] | None = None) -> dict:
    """One resource per stage, from the preset `name` with `overrides` (stage -> values) on top."""
    values = load_preset(name)
    resources = {}
    for stage, cls in STAGES.items():
        merged = {**values.get(stage, {}), **(overrides or {}).get(stage, {})}
        unknown = sorted(set(merged) - set(cls.model_fields))
        if unknown:
            raise ValueError(
                f"Preset {name!r}, section {stage}: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(cls.model_fields)}."
            )
        if stage == "training":
            merged.setdefault("preset", preset_name(name))
        resources[stage] = cls(**merged)
    return resources
