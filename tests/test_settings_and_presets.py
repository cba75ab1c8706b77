from pathlib import Path
from types import SimpleNamespace

import pytest

from assets.domain.training import TrainingConfig, trainer_setup
from pipelines.presets import STAGES, available, load_preset, stage_resources
from pipelines.settings import REPO_ROOT, SAMPLE_LANDING, Settings
from resources.models import BUNDLED_BASE_MODEL


def test_defaults_keep_all_state_under_one_home():
    s = Settings.from_env({})
    assert s.home == REPO_ROOT / ".ft"
    assert s.landing_dir == str(SAMPLE_LANDING)
    assert s.base_model == BUNDLED_BASE_MODEL and s.preset == "cpu"
    assert s.mlflow_tracking_uri == f"sqlite:///{REPO_ROOT / '.ft' / 'mlflow' / 'mlflow.db'}"
    assert s.dagster_home == s.home / "dagster"


def test_environment_overrides_each_setting(tmp_path):
    s = Settings.from_env(
        {
            "FT_HOME": str(tmp_path / "h"),
            "FT_LANDING_DIR": "/data/in",
            "FT_BASE_MODEL": "/models/x",
            "FT_MODEL_NAME": "m",
            "FT_PRESET": "gpu",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        }
    )
    assert (s.home, s.landing_dir, s.base_model, s.model_name, s.preset, s.mlflow_tracking_uri) == (
        tmp_path / "h",
        "/data/in",
        "/models/x",
        "m",
        "gpu",
        "http://127.0.0.1:5000",
    )


def test_relative_home_becomes_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"FT_HOME": "state"}).home == tmp_path / "state"


def settings_as_named(config, values: dict, where: str) -> None:
    """Each of `values` is `config`'s, a nested section (`training.sft`) key by key, a map's entries
    (`sweep.parameters`) by key; a swept setting's list is short for its `values`."""
    if isinstance(config, dict):
        assert set(config) == set(values), where
        config = SimpleNamespace(**{k: (v.values if isinstance(values[k], list) else v) for k, v in config.items()})
    for key, value in values.items():
        if isinstance(value, dict):
            settings_as_named(getattr(config, key), value, f"{where}.{key}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):  # a list of sections (suites)
            assert len(getattr(config, key)) == len(value), f"{where}.{key}"
            for i, item in enumerate(value):
                settings_as_named(getattr(config, key)[i], item, f"{where}.{key}[{i}]")
        else:
            assert getattr(config, key) == value, f"{where}.{key}={value} but the setting is {getattr(config, key)}"


@pytest.mark.parametrize("name", available())
def test_every_preset_builds_every_stage(name):
    assert (Path(__file__).parents[1] / "pipelines" / "presets" / f"{name}.yaml").read_text().startswith("# ")
    resources = stage_resources(name)
    assert set(resources) == set(STAGES)
    assert resources["training"].preset == name
    for stage, values in load_preset(name).items():
        settings_as_named(resources[stage], values, f"{name}.yaml {stage}")


def test_presets_include_smoke_cpu_and_gpu():
    assert {"smoke", "cpu", "gpu"} <= set(available())


def test_cpu_preset_spells_out_the_stage_defaults():
    for stage, values in load_preset("cpu").items():
        settings_as_named(STAGES[stage](), values, f"cpu.yaml {stage} (the default differs)")


def test_unknown_preset_or_setting_is_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Available: cpu, gpu, smoke"):
        load_preset("fast")
    (tmp_path / "typo.yaml").write_text("# typo\ntraining:\n  max_stepz: 3\ntrainer: {}\n")
    monkeypatch.setattr("pipelines.presets.PRESETS_DIR", tmp_path)
    with pytest.raises(ValueError, match="unknown section\\(s\\) trainer"):
        load_preset("typo")
    (tmp_path / "typo.yaml").write_text("# typo\ntraining:\n  max_stepz: 3\n")
    with pytest.raises(ValueError, match="unknown setting\\(s\\) training.max_stepz"):
        stage_resources("typo")
    (tmp_path / "typo.yaml").write_text("# flat, as before the method sections\ntraining:\n  max_steps: 3\n")
    with pytest.raises(ValueError, match="training.max_steps is now training.sft.max_steps"):
        stage_resources("typo")


def test_overrides_go_over_the_preset():
    resources = stage_resources("smoke", {"training": {"sft": {"max_steps": 9}}, "gate": {"min_improvement": 0.2}})
    assert resources["training"].sft.max_steps == 9 and resources["training"].sft.per_device_train_batch_size == 4
    assert resources["gate"].min_improvement == 0.2


def test_training_config_maps_to_trl_and_peft_explicitly(tmp_path):
    config = TrainingConfig(
        lora_target_modules="q_proj, v_proj", precision="fp32", sft={"max_steps": 7, "group_by_length": False}
    )
    setup = trainer_setup("sft", config, tmp_path, use_cpu=True, max_length=99)
    sft, lora = setup.args, setup.peft
    assert sft.max_steps == 7 and sft.max_length == 99 and not sft.padding_free
    assert sft.train_sampling_strategy == "random"
    packed = trainer_setup("sft", TrainingConfig(sft={"padding_free": True}), tmp_path, True, max_length=99).args
    assert packed.padding_free and packed.max_length is None, "padding-free: validation bounded the lengths"
    grouped = trainer_setup("sft", TrainingConfig(sft={"group_by_length": True}), tmp_path, True, max_length=99).args
    assert grouped.train_sampling_strategy == "group_by_length"
    # the dataset arrives tokenized with its assistant mask (tools, turn weights); TRL labels from it
    assert sft.assistant_only_loss is False
    assert sft.bf16 is False and sft.gradient_checkpointing is False
    assert (sft.save_strategy, sft.save_steps, sft.save_total_limit) == ("steps", 10, 2) and sft.report_to == []
    assert trainer_setup("sft", TrainingConfig(save_steps=0), tmp_path, True, max_length=128).args.save_strategy == "no"
    assert sorted(lora.target_modules) == ["q_proj", "v_proj"]
    assert lora.r == 16 and lora.lora_alpha == 32


def test_every_config_field_is_described():
    configs = [*STAGES.values(), *(type(getattr(TrainingConfig(), s)) for s in ("sft", "dpo", "grpo"))]
    for config in configs:
        for name, field in config.model_fields.items():
            assert field.description, f"{config.__name__}.{name} has no description"


def test_state_folder_holds_a_dagster_instance_with_one_training_at_a_time(tmp_path, monkeypatch):
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))  # restored after the test
    settings = Settings.from_env({"FT_HOME": str(tmp_path / "home")}).prepare()
    assert (settings.dagster_home / "dagster.yaml").is_file()
    instance = dg.DagsterInstance.get()
    assert instance.event_log_storage.get_concurrency_info("training").limit == 1
    # Offline by default: no usage reports, and no "Join the Dagster community" dialog over the UI.
    assert not instance.telemetry_enabled and not instance.nux_enabled
