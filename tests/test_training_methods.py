"""Each adapter and method trains a few steps on the tiny Llama and does what it says: LoRA-style
adapters move their adapter weights and leave the base weights alone, `full` moves the base
weights, `qlora` is refused on a CPU before any model loads, and DPO widens the margin between the
chosen and the rejected reply on the pairs it trained on. Plus the mapping of the settings to TRL
and PEFT (the CUDA settings too, checked on the CPU), and how a run picks its method."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from assets.domain.preferences import chosen_conversations, margin_summary, reply_tokens
from assets.domain.training import TrainingConfig, cpu_has_native_bf16, resolve_method, trainer_setup, uses_bf16
from assets.domain.values import TrainedModel
from assets.model_evaluation import candidate_model, pair_logprobs
from assets.preference_tuned_model import starting_point
from assets.recipes import dpo, sft
from assets.recipes.job import RecipeJob, save_models
from resources.models import ModelLoader
from resources.state import StateStore
from resources.training_tracking import live_tracking

TICKETS = [
    ("I was charged twice for PayFlow", "billing", "PayFlow"),
    ("RouterX keeps crashing", "technical", "RouterX"),
    ("I cannot log in to CloudDrive", "account", "CloudDrive"),
    ("my Thermo has not arrived yet", "shipping", "Thermo"),
]


def prompt(text: str) -> list[dict]:
    return [{"role": "system", "content": "Triage the ticket as JSON."}, {"role": "user", "content": text}]


def answer(category: str, product: str) -> str:
    return f'{{"category": "{category}", "product": "{product}"}}'


@pytest.fixture(scope="module")
def sft_rows() -> pd.DataFrame:
    messages = [[*prompt(t), {"role": "assistant", "content": answer(c, p)}] for t, c, p in TICKETS * 2]
    return pd.DataFrame({"messages": messages, "n_tokens": [64] * len(messages)})


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    """Right JSON chosen, a wrong category rejected."""
    return pd.DataFrame(
        {
            "messages": [prompt(t) for t, _, _ in TICKETS * 2],
            "chosen": [answer(c, p) for _, c, p in TICKETS * 2],
            "rejected": [answer("feature_request", p) for _, _, p in TICKETS * 2],
        }
    )


# The models `Loads` loaded, in order (a resource's own attributes are its config fields).
LOADED: list[str] = []


class Loads(ModelLoader):
    """A ModelLoader on the CPU that remembers which models it loaded (in LOADED)."""

    @property
    def loaded(self) -> list[str]:
        return LOADED

    def load_model(self, path: str, dtype: str = "float32", quantization_config=None):
        LOADED.append(path)
        return super().load_model(path, dtype, quantization_config)


def loader() -> Loads:
    LOADED.clear()
    return Loads(base_model="unused", device="cpu")


def train_sft(config: TrainingConfig, base: str, rows: pd.DataFrame, folder):
    return sft.train(config, base, rows, loader(), folder, None, TrainerCallback())


def quick(sft_settings: dict | None = None, dpo_settings: dict | None = None, **shared) -> TrainingConfig:
    """A few steps at a rate high enough to move a tiny model's weights visibly."""
    steps = {"max_steps": 3, "per_device_train_batch_size": 4, "warmup_steps": 0, "learning_rate": 1e-2}
    # fp32: the same arithmetic on every CI machine, bf16 or not
    defaults = {"precision": "fp32", "save_steps": 0, "logging_steps": 1}
    return TrainingConfig(**{**defaults, **shared}, sft={**steps, **(sft_settings or {})}, dpo=dpo_settings or {})


def job(folder, starts_from: str) -> RecipeJob:
    """What a recipe's job is told, as far as saving reads it."""
    return RecipeJob({}, starts_from, str(folder), None, None, str(folder / "out"), str(folder), {}, {}, "")


def base_weight_names(name: str) -> str:
    """A PEFT parameter's name as it is in the base model's safetensors file."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


@pytest.mark.parametrize("adapter", ["lora", "dora", "rslora"])
def test_adapters_train_their_own_weights_and_leave_the_base_alone(adapter, tiny_model_dir, sft_rows, tmp_path):
    run = train_sft(quick(adapter=adapter), str(tiny_model_dir), sft_rows, tmp_path / "ckpt")
    model, original = run.trainer.model, load_file(tiny_model_dir / "model.safetensors")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero; training must move it"
    frozen = {base_weight_names(n): p for n, p in model.named_parameters() if "lora_" not in n}
    assert frozen and all(not p.requires_grad for p in frozen.values())
    for name, tensor in original.items():
        if name in frozen:
            assert torch.equal(frozen[name].detach().cpu(), tensor), f"base weight {name} changed"
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    magnitudes = [n for n, _ in model.named_parameters() if "lora_magnitude_vector" in n]
    assert bool(magnitudes) is (adapter == "dora"), "DoRA learns a magnitude per output; the others do not"
    scale = 32 / 16**0.5 if adapter == "rslora" else 32 / 16
    assert layer.scaling["default"] == pytest.approx(scale), "rsLoRA scales by alpha/sqrt(r), LoRA by alpha/r"


def test_full_fine_tuning_changes_the_base_weights_and_saves_no_adapter(tiny_model_dir, sft_rows, tmp_path):
    run = train_sft(quick({"learning_rate": 1e-3}, adapter="full"), str(tiny_model_dir), sft_rows, tmp_path / "ckpt")
    model, original = run.trainer.model, load_file(tiny_model_dir / "model.safetensors")
    assert not hasattr(model, "peft_config")
    trained = {n: p.detach().cpu() for n, p in model.named_parameters()}
    changed = [n for n, t in original.items() if n in trained and not torch.equal(trained[n], t)]
    assert any("q_proj" in n for n in changed) and any("mlp" in n for n in changed)
    adapter_dir, merged_dir = save_models(run, job(tmp_path, "unused"), loader())
    assert adapter_dir is None and Path(merged_dir, "model.safetensors").is_file()
    saved = load_file(Path(merged_dir) / "model.safetensors")
    assert all(torch.equal(saved[n], trained[n]) for n in changed if n in saved)


def test_qlora_on_a_cpu_is_refused_before_any_model_loads(tiny_model_dir, sft_rows, pairs, tmp_path):
    models = loader()
    with pytest.raises(ValueError, match="needs a CUDA GPU|kernels need a CUDA GPU") as refused:
        sft.train(quick(adapter="qlora"), str(tiny_model_dir), sft_rows, models, tmp_path, None)
    assert "On a CPU use adapter 'lora'" in str(refused.value)
    with pytest.raises(ValueError, match="CUDA GPU"):
        dpo.train(quick(adapter="qlora"), str(tiny_model_dir), pairs, models, tmp_path, None)
    assert models.loaded == [], "refused before loading anything"


class RecordedRun:
    """Stands in for the MLflow run `live_tracking` reports to: keeps what it is sent."""

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))


def margin(model, tokenizer, pairs: pd.DataFrame) -> float:
    triples = [
        (*reply_tokens(tokenizer, m, c), reply_tokens(tokenizer, m, r)[1])
        for m, c, r in zip(pairs["messages"], pairs["chosen"], pairs["rejected"])
    ]
    return margin_summary(*pair_logprobs(model, tokenizer.pad_token_id, triples, batch_size=4))["preference_margin"]


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_dpo_widens_the_chosen_minus_rejected_margin_on_its_pairs(adapter, tiny_model_dir, pairs, tmp_path):
    models = loader()
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    before = margin(models.load_model(str(tiny_model_dir)).eval(), tokenizer, pairs)
    rate = 5e-2 if adapter == "lora" else 1e-2
    config = quick(
        dpo_settings={"max_steps": 5, "per_device_train_batch_size": 4, "learning_rate": rate}, adapter=adapter
    )
    tracked, lines = RecordedRun(), []
    callback = live_tracking(tracked, lines.append, config.dpo.max_steps, "dpo", dpo.TRACKED)
    run = dpo.train(config, str(tiny_model_dir), pairs, models, tmp_path, None, callback)
    after = margin(run.trainer.model.eval(), tokenizer, pairs)
    assert after > before + 0.1, (before, after)
    assert [step for step, m in tracked.logged if "dpo.loss" in m] == [1, 2, 3, 4, 5], "each step logged as it came"
    assert all({"dpo.reward_accuracy", "dpo.reward_margin", "dpo.learning_rate"} <= set(m) for _, m in tracked.logged)
    assert lines[-1].startswith("dpo step 5/5 (100%), loss ")
    assert run.trainer.state.global_step == 5 and len(run.curve()) == 5
    assert set(run.last(dpo.REPORTED)) == {"reward_accuracy", "reward_margin"}
    assert run.curve()[0][1] == pytest.approx(0.6931, abs=1e-3), "the policy starts equal to its reference"


def test_the_second_stage_starts_from_the_sft_model_or_the_base():
    sft = TrainedModel(
        adapter_dir="/sft/adapter", merged_dir="/sft/merged", loss_curve_png="", preset="cpu", settings={},
        device="cpu", max_length=64, train_examples=8, steps=3, train_loss=1.0, train_seconds=1.0, method="sft+dpo",
    )  # fmt: skip
    config = TrainingConfig()
    assert starting_point("sft+dpo", sft, "/base", config) is sft
    assert starting_point("sft+grpo", sft, "/base", config) is sft
    for method in ("dpo", "grpo"):
        assert starting_point(method, sft, "/base", config).merged_dir == "/base"
    skipped = TrainedModel(**{**sft.__dict__, "method": "dpo", "adapter_dir": None, "merged_dir": "/base"})
    with pytest.raises(ValueError, match="materialize fine_tuned_model again"):
        starting_point("sft+dpo", skipped, "/base", config)


def test_a_second_stage_without_sft_never_carries_an_earlier_runs_sft_figures():
    """preference_tuned_model materialized alone after the method changed to 'dpo' or 'grpo' still gets
    the last SFT value as input: its steps, loss and MLflow run must not describe the candidate."""
    sft = TrainedModel(
        adapter_dir="/sft/adapter", merged_dir="/sft/merged", loss_curve_png="/sft/curve.png", preset="cpu",
        settings={}, device="cpu", max_length=64, train_examples=8, steps=3, train_loss=1.0, train_seconds=1.0,
        loss_curve=((1, 1.0),), mlflow_run_id="abc", method="sft+dpo", setup_key="sft-123",
    )  # fmt: skip
    for method in ("dpo", "grpo"):
        cleared = starting_point(method, sft, "/base", TrainingConfig(preset="smoke"))
        assert (cleared.steps, cleared.train_examples, cleared.train_loss, cleared.loss_curve) == (0, 0, 0.0, ())
        assert (cleared.mlflow_run_id, cleared.merged_dir, cleared.method) == (None, "/base", method)
        assert (cleared.setup_key, cleared.preset, cleared.settings["sft.max_steps"]) == ("", "smoke", 50)


def test_auto_picks_sft_plus_dpo_only_when_there_are_preference_pairs():
    assert resolve_method("auto", preference_pairs=12) == "sft+dpo"
    assert resolve_method("auto", preference_pairs=0) == "sft"
    assert resolve_method("sft", preference_pairs=12) == "sft"
    assert resolve_method("dpo", preference_pairs=3) == "dpo"
    assert resolve_method("grpo", preference_pairs=0) == "grpo", "GRPO needs prompts, not pairs"
    assert resolve_method("sft+grpo", preference_pairs=5) == "sft+grpo", "auto never picks GRPO; a setting does"
    with pytest.raises(ValueError, match="holds none"):
        resolve_method("sft+dpo", preference_pairs=0)


def test_unknown_method_or_adapter_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="sft\\+grpo"):
        TrainingConfig(method="rlhf")
    with pytest.raises(ValueError, match="qlora"):
        TrainingConfig(adapter="lokr")


def test_settings_are_typed_and_an_unknown_key_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="training.dpo_beta is now training.dpo.beta"):
        TrainingConfig(dpo_beta=0.3)
    with pytest.raises(ValueError, match="training.max_steps is now training.sft.max_steps"):
        TrainingConfig(max_steps=3)
    with pytest.raises(ValueError, match=r"training\.grpo\.generations; training\.grpo has: max_steps, "):
        TrainingConfig(grpo={"generations": 4})
    with pytest.raises(ValueError, match=r"unknown setting\(s\) training\.colour; training has: preset, method"):
        TrainingConfig(colour="red")
    with pytest.raises(ValueError, match="'group', 'batch' or 'none'"):
        TrainingConfig(grpo={"scale_rewards": "yes"})
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        TrainingConfig(grpo={"num_generations": 1})
    config = TrainingConfig(sft={"max_steps": 7}, dpo={"beta": 0.3})
    assert (config.sft.max_steps, config.sft.learning_rate, config.dpo.beta, config.dpo.max_steps) == (
        7,
        2.5e-4,
        0.3,
        4,
    )
    assert config.flat()["sft.max_steps"] == 7 and "preset" not in config.flat()


def test_preference_pairs_alone_train_sft_on_their_chosen_replies(pairs):
    examples = chosen_conversations(pairs.assign(kind="preference"))
    assert list(examples["kind"].unique()) == ["sft"]
    first = examples["messages"].iloc[0]
    assert first[:-1] == pairs["messages"].iloc[0]
    assert first[-1] == {"role": "assistant", "content": pairs["chosen"].iloc[0]}


@pytest.mark.parametrize("adapter", ["lora", "dora", "rslora", "qlora"])
def test_cuda_mapping_of_lora_adapters_and_bf16(adapter, tmp_path, monkeypatch):
    # TrainingArguments refuses bf16 off the CPU where no GPU supports it: stand in for a GPU that does.
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)
    config = TrainingConfig(adapter=adapter, precision="bf16", gradient_checkpointing=True, dpo={"beta": 0.3})
    setup = trainer_setup("sft", config, tmp_path, use_cpu=False, max_length=99)
    for stage in ("sft", "dpo", "grpo"):
        args = trainer_setup(stage, config, tmp_path, use_cpu=False).args
        assert args.bf16 and args.gradient_checkpointing and not args.use_cpu, stage
    assert (setup.peft.use_dora, setup.peft.use_rslora) == (adapter == "dora", adapter == "rslora")
    assert setup.peft.r == 16 and setup.peft.lora_alpha == 32
    if adapter == "qlora":
        quantization = setup.model_kwargs["quantization_config"]
        assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
        assert quantization.bnb_4bit_use_double_quant and quantization.bnb_4bit_compute_dtype == torch.bfloat16
    else:
        assert setup.model_kwargs == {}


def test_dpo_grpo_and_full_mapping(tmp_path):
    config = TrainingConfig(
        adapter="full", precision="fp32", save_steps=3, keep_checkpoints=4,
        dpo={"max_steps": 7, "per_device_train_batch_size": 3, "learning_rate": 2e-6, "beta": 0.25},
        grpo={"max_steps": 5, "per_device_train_batch_size": 6, "num_generations": 3, "max_completion_length": 20,
              "temperature": 0.7, "beta": 0.0, "loss_type": "grpo", "reward_weights": [1.0, 0.5]},
    )  # fmt: skip
    setup = trainer_setup("dpo", config, tmp_path, use_cpu=True)
    assert setup.peft is None and setup.model_kwargs == {}
    dpo_args = setup.args
    assert (dpo_args.max_steps, dpo_args.per_device_train_batch_size, dpo_args.learning_rate, dpo_args.beta) == (
        7, 3, 2e-6, 0.25,
    )  # fmt: skip
    assert not dpo_args.bf16 and not dpo_args.gradient_checkpointing and dpo_args.use_cpu, "GPU defaults off on CPU"
    assert dpo_args.max_length is None
    grpo = trainer_setup("grpo", config, tmp_path, use_cpu=True).args
    assert (grpo.max_steps, grpo.per_device_train_batch_size, grpo.num_generations) == (5, 6, 3)
    assert (grpo.max_completion_length, grpo.temperature, grpo.beta, grpo.loss_type) == (20, 0.7, 0.0, "grpo")
    assert grpo.reward_weights == [1.0, 0.5] and grpo.logging_steps == 1
    for args in (dpo_args, grpo):  # every method checkpoints as SFT does, so a killed one resumes
        assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 3, 4)


def test_precision_auto_is_bf16_only_where_the_cpu_multiplies_bf16_natively(tmp_path):
    with_bf16, without = tmp_path / "zen4", tmp_path / "older"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 fma\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f fma\n")
    assert cpu_has_native_bf16(with_bf16) and not cpu_has_native_bf16(without)
    assert not cpu_has_native_bf16(tmp_path / "no-such-file"), "no /proc/cpuinfo (macOS): fp32"
    assert uses_bf16("bf16", use_cpu=True) and not uses_bf16("fp32", use_cpu=True)
    assert uses_bf16("auto", use_cpu=True) == cpu_has_native_bf16()
    with pytest.raises(ValueError, match="'auto', 'bf16' or 'fp32'"):
        TrainingConfig(precision="fp16")


def test_padding_free_batches_train_exactly_like_padded_ones(tiny_model_dir, sft_rows, tmp_path):
    """Packed into one row, examples of different lengths must not attend to each other: the loss
    curve matches padded batches of the same examples in the same order."""
    curves = {}
    for padding_free in (False, True):
        config = quick({"padding_free": padding_free, "max_steps": 3, "per_device_train_batch_size": 4})
        run = sft.train(config, str(tiny_model_dir), sft_rows, loader(), tmp_path / str(padding_free), None)
        curves[padding_free] = [loss for _, loss in run.curve()]
    assert len(curves[True]) == 3
    assert curves[True] == pytest.approx(curves[False], rel=1e-4), curves


def test_evaluation_loads_each_candidate_the_way_it_was_trained(tiny_model_dir, pairs, tmp_path):
    """An adapter that applies to the base goes on the loaded base; anything else (an adapter on the
    merged SFT model, all weights trained) is loaded from its merged folder."""
    models = loader()
    config = quick(dpo_settings={"max_steps": 1, "per_device_train_batch_size": 4})
    run = dpo.train(config, str(tiny_model_dir), pairs, models, tmp_path, None)
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    state = StateStore(home=str(tmp_path))
    models.save_trained(run.trainer.model, run.tokenizer, adapter, merged, state.atomic_dir, str(tiny_model_dir))
    candidate = TrainedModel(
        adapter_dir=str(adapter), merged_dir=str(merged), loss_curve_png="", preset="smoke", settings={},
        device="cpu", max_length=64, train_examples=8, steps=1, train_loss=1.0, train_seconds=1.0,
        method="dpo", adapter_base_dir=str(tiny_model_dir),
    )  # fmt: skip
    base = models.load_model(str(tiny_model_dir))
    models.loaded.clear()
    on_base = candidate_model(models, base, candidate, str(tiny_model_dir))
    assert hasattr(on_base, "peft_config") and models.loaded == []
    on_sft = TrainedModel(**{**candidate.__dict__, "adapter_base_dir": "/sft/merged", "method": "sft+dpo"})
    loaded = candidate_model(models, models.load_model(str(tiny_model_dir)), on_sft, str(tiny_model_dir))
    assert not hasattr(loaded, "peft_config") and models.loaded[-1] == str(merged)
