"""Shared fixtures: the bundled tokenizer, a tiny Llama built from a config, settings on a temp home."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from pipelines.settings import SAMPLE_LANDING, Settings  # noqa: E402


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


def run_all(settings, overrides=None, instance=None):
    """What `make run` does, in this process: (definitions, instance, finetune result, problems)."""
    import dagster as dg

    from pipelines.definitions import build_definitions
    from pipelines.run import run_pipeline

    defs = build_definitions(settings, overrides)
    instance = instance or dg.DagsterInstance.ephemeral()
    result, problems = run_pipeline(defs, instance)
    return defs, instance, result, problems


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
    defs, instance, first, _ = run_all(settings, lower_bar)
    _, _, second, _ = run_all(settings, lower_bar, instance)
    job = defs.resolve_job_def("finetune")
    yield {"settings": settings, "job": job, "instance": instance, "first": first, "second": second}
    mp.undo()
