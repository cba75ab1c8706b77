"""Shared fixtures: the bundled tokenizer, a tiny Llama built from a config, settings on a temp home,
and `run_all`: `make run` driven by its own driver on those settings."""

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from pipelines.settings import SAMPLE_LANDING, Settings  # noqa: E402

SAMPLE_SUITE = SAMPLE_LANDING.parent / "suites" / "general_knowledge.jsonl"


@pytest.fixture(scope="session")
def bundled_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (with its chat template), read from the GGUF file once per session."""
    from transformers import AutoTokenizer

    from resources.models import bundled_gguf

    gguf = bundled_gguf()
    folder = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bundled_tokenizer(bundled_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_tokenizer_dir)


@pytest.fixture(scope="session")
def prepared_bundled_base(tmp_path_factory) -> Path:
    """The bundled SmolLM2 prepared once per session exactly as `base_model` prepares it (dequantized,
    made ready for chat): end-to-end tests that are not about the conversion seed their state with it
    (`seed_base_model`) instead of converting the GGUF file again (tests/test_e2e_bundled.py does)."""
    from assets.base_model import cache_name
    from assets.domain.chat import ready_for_chat
    from resources.models import BUNDLED_BASE_MODEL, ModelLoader

    folder = tmp_path_factory.mktemp("bundled_base") / cache_name(BUNDLED_BASE_MODEL)
    folder.mkdir()
    ModelLoader(base_model=BUNDLED_BASE_MODEL).materialize_base(folder, prepare=ready_for_chat)
    return folder


def seed_base_model(settings: Settings, prepared: Path) -> None:
    """The prepared base model where `base_model` looks for it under the settings' home (hard links):
    the asset reuses it."""
    import shutil

    shutil.copytree(prepared, settings.home / "artifacts" / "base_model" / prepared.name, copy_function=os.link)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_tokenizer_dir) -> Path:
    """A randomly initialised Llama of ~0.4M parameters with the bundled tokenizer, as a local folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_settings(home: Path, base_model: str, landing: Path = SAMPLE_LANDING, preset: str = "smoke"):
    return Settings(
        home=home,
        landing_dir=str(landing),
        base_model=base_model,
        model_name="test-model",
        preset=preset,
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
    )


# The tests' runs execute in this process, their steps one after another: `make run`'s code server
# and process per run and per step cost several times the tiny model's training (tests/test_resume.py,
# test_operator_view.py and test_training_preview.py take that path).
IN_PROCESS_EXECUTOR = {"execution": {"config": {"in_process": {}}}}


class InProcessRuns:
    """The runs backend `run_all` gives `make run`'s driver: each run created from the job of `defs`
    (what the code location loads for the same settings) and executed in this process."""

    def __init__(self, defs, instance):
        self.defs, self.instance = defs, instance

    def create(self, job_name: str, partition: str | None = None, tags: dict | None = None):
        from pipelines.code_location import PARTITION_TAG

        job = self.defs.resolve_job_def(job_name)
        run_tags = {**(tags or {}), **({PARTITION_TAG: partition} if partition else {})}
        return self.instance.create_run_for_job(job, run_config=IN_PROCESS_EXECUTOR, tags=run_tags)

    def launch(self, run) -> None:
        from dagster._core.definitions.job_base import InMemoryJob
        from dagster._core.execution.api import execute_run

        execute_run(InMemoryJob(self.defs.resolve_job_def(run.job_name)), run, self.instance)

    def follow(self, run_id: str, show):
        from pipelines.code_location import follow_run

        return follow_run(self.instance, run_id, show)

    def events(self, run_id: str) -> list:
        from pipelines.code_location import run_events

        return run_events(self.instance, run_id)

    def terminate(self, run_id: str) -> None:
        """Nothing to stop: a run here has ended before it is followed."""


def preset_file(settings: Settings, overrides: dict | None) -> Path:
    """The settings' preset with `overrides` on top, as a YAML file of one's own (FT_PRESET=path), named
    like the preset so that runs still name it (`smoke`): the driver, as `make run`'s, reads nothing
    but the settings."""
    import tempfile

    import yaml

    from pipelines.presets import load_preset, merged, preset_name

    folder = Path(tempfile.mkdtemp(prefix="preset-", dir=settings.home))
    path = folder / f"{preset_name(settings.preset)}.yaml"
    path.write_text(yaml.safe_dump(merged(load_preset(settings.preset), overrides or {}), sort_keys=False))
    return path


@dataclass(frozen=True)
class PipelineRun:
    """One `make run` as `run_all` ran it: its last run (of the finetune job unless told), that run's
    events, the problems the driver reported, and the value of each asset the run materialized as
    stored when the run ended (a later run stores over it). Read with the names of Dagster's
    in-process result."""

    run: Any
    all_events: list
    problems: list[str]
    values: dict[str, Any]

    @property
    def success(self) -> bool:
        import dagster as dg

        return self.run is not None and self.run.status == dg.DagsterRunStatus.SUCCESS

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def output_for_node(self, asset: str):
        if asset not in self.values:
            raise KeyError(f"{asset} was not materialized by run {self.run_id if self.run else '(none)'}")
        return self.values[asset]

    def asset_materializations_for_node(self, asset: str) -> list:
        return [
            e.step_materialization_data.materialization
            for e in self.all_events
            if e.is_step_materialization and e.step_key == asset
        ]

    def get_step_success_events(self) -> list:
        return [e for e in self.all_events if e.is_step_success]


def run_all(settings: Settings, overrides=None, instance=None, job: str = "finetune"):
    """`make run` on `settings` (with `overrides` over its preset), by `make run`'s driver, each run in
    this process. Returns (the driver's definitions, the instance, a `PipelineRun` of `job`, the problems)."""
    import dagster as dg

    from pipelines.definitions import build_definitions
    from pipelines.run import LaunchedPipeline, Terminal

    settings = replace(settings, preset=str(preset_file(settings, overrides)))
    instance = instance or dg.DagsterInstance.ephemeral()
    log_path = settings.home / "logs" / "run_all.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        runs = InProcessRuns(build_definitions(settings), instance)
        pipeline = LaunchedPipeline(settings, instance, runs, Terminal(sys.stdout, log, log_path))
        run, events, problems = pipeline(job)
    assets = sorted({e.asset_key.to_user_string() for e in events if e.is_step_materialization})
    values = {asset: pipeline.value(asset) for asset in assets}
    return pipeline.defs, instance, PipelineRun(run, events, problems, values), problems


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tiny_model_dir):
    """Two runs of the whole job. A tiny random model learns nothing, so both runs lower the bar over
    the base (margin -1, on the primary metric and on preference accuracy): the first becomes
    champion, the second must still beat the first."""
    home = tmp_path_factory.mktemp("ft_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, str(tiny_model_dir)).prepare()
    lower_bar = {"gate": {"min_improvement": -1.0, "max_forgetting_pct": 1000.0, "min_preference_gain": -1.0}}
    # The shipped regression suite (never blocking here) and the judge (the tiny model itself): both scored
    # for base, candidate and, in the second run, the champion.
    suite = {"name": "general_knowledge", "path": str(SAMPLE_SUITE), "max_regression": 1.0}
    lower_bar["evaluation"] = {"suites": [suite], "judge": {"kind": "local"}}
    defs, instance, first, _ = run_all(settings, lower_bar)
    _, _, second, _ = run_all(settings, lower_bar, instance)
    job = defs.resolve_job_def("finetune")
    yield {"settings": settings, "job": job, "instance": instance, "first": first, "second": second}
    mp.undo()


@dataclass(frozen=True)
class ValidatedDrop:
    """One drop read and validated for real (`validate_drop`): the run's result, the resources it ran
    with, and the drop's `rejected_records` metadata as plain values."""

    result: Any
    resources: dict
    metadata: dict


def validate_drop(tmp_path: Path, base_model: Path, drop: str, rows: list[dict], validation: dict) -> ValidatedDrop:
    """`raw_records` and `validated_records` materialized for one drop of `rows` (a chat.jsonl file) in a
    landing under `tmp_path`, the base model a stand-in asset, `validation` over the smoke preset's section."""
    import json

    import dagster as dg

    from assets.raw_records import raw_records
    from assets.validated_records import validated_records
    from pipelines.definitions import build_resources

    (tmp_path / "landing" / drop).mkdir(parents=True)
    (tmp_path / "landing" / drop / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = make_settings(tmp_path / "home", str(base_model), tmp_path / "landing").prepare()
    resources = build_resources(settings, {"validation": validation})

    @dg.asset(name="base_model")
    def stand_in_base():
        return str(base_model)

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("drops", [drop])
    dg.materialize([stand_in_base], resources=resources, instance=instance)  # stored, as the data stages read it
    result = dg.materialize([stand_in_base, raw_records, validated_records], selection=[raw_records, validated_records],
                            resources=resources, instance=instance, partition_key=drop)  # fmt: skip
    (rejected,) = [m for m in result.asset_materializations_for_node("validated_records")
                   if m.asset_key.path == ["rejected_records"]]  # fmt: skip
    return ValidatedDrop(result, resources, {k: v.value for k, v in rejected.metadata.items()})
