"""Named presets: the settings of every stage, one YAML file per preset.

Each file starts with a comment saying when to use it, then one section per stage (`ingest`,
`validation`, `split`, `training`, `evaluation`, `gate`), and optionally `sweep` (training settings to
try, one SFT training each: `assets/domain/sweep.py`). Values a preset does not name keep the
stage's default, which is the `cpu` preset. The stage settings are Dagster resources, so every run
uses the preset, whether launched by `make run`, the UI, the sensor, the schedule or automation.
FT_PRESET may also be the path of a YAML file of your own (`FT_PRESET=./my-preset.yaml`).
The Launchpad can set a stage's settings for one run (under `resources`); that replaces the stage's
whole section, so name every value that should differ from the stage's defaults.
"""

from pathlib import Path

import yaml

from assets.domain.evaluation import EvaluationConfig
from assets.domain.sweep import SweepConfig, plan, refuse_unsweepable
from assets.domain.training import MOVED, TrainingConfig, refuse_unknown
from assets.instruction_pairs import SplitConfig
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
    "sweep": SweepConfig,
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
    suites = (values.get("evaluation") or {}).get("suites")
    if suites:
        values["evaluation"]["suites"] = [suite_from(path.parent, suite) for suite in suites]
    return values


def merged(preset: dict, overrides: dict) -> dict:
    """`overrides` over `preset`, a nested section (`training.sft`) merged key by key."""
    out = dict(preset)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def stage_resources(name: str, overrides: dict[str, dict] | None = None) -> dict:
    """One resource per stage, from the preset `name` with `overrides` (stage -> values) on top. A setting
    a stage does not have is refused with its name and the stage's settings (the training settings of
    the flat layout before its method sections, with their new place)."""
    values = load_preset(name)
    resources = {}
    for stage, cls in STAGES.items():
        settings = merged(values.get(stage, {}), (overrides or {}).get(stage, {}))
        try:
            refuse_unknown(cls, settings, stage, MOVED if stage == "training" else None)
            if stage == "sweep":
                refuse_unsweepable(settings.get("parameters") or {})
        except ValueError as error:
            raise ValueError(f"Preset {name!r} ({preset_path(name)}): {error}") from None
        if stage == "training":
            settings.setdefault("preset", preset_name(name))
        resources[stage] = cls(**settings)
    try:  # a sweep whose points cannot train is refused as the definitions load, not as the run starts
        plan(resources["sweep"], resources["training"])
    except ValueError as error:
        raise ValueError(f"Preset {name!r} ({preset_path(name)}): {error}") from None
    return resources


def suite_from(folder: Path, suite: dict) -> dict:
    """A regression suite's settings with its file's relative path taken from the preset file's folder."""
    path = Path(str(suite.get("path", "")))
    return suite | ({"path": str((folder / path).resolve())} if suite.get("path") and not path.is_absolute() else {})
