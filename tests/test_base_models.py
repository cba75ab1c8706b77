"""Base models users bring: a `.gguf` file, a model with no chat template, templates without a system
turn or {% generation %} markers, several end tokens."""

import json

import pytest

from assets.domain.chat import (
    CHATML_TRAINING_TEMPLATE,
    DEFAULT_CHAT_TEMPLATE,
    derived_assistant_mask,
    end_of_turn_token,
    ready_for_chat,
    training_chat_template,
    training_tokens,
)
from assets.domain.tool_calls import chat_inputs, render_text, takes_system
from resources.served_model import end_tokens

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! How can I help?", "weight": 0},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]
# A template with no system role, raising on one as Mistral-7B-Instruct-v0.1's does.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# One that drops a system turn without a word, as Phi-3-mini's first template did.
SILENT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + "
    "'<|end|>\n<|assistant|>\n' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
)


@pytest.fixture
def tokenizer_with(bundled_tokenizer_dir):
    """The bundled tokenizer with another chat template (a fresh copy per test)."""
    from transformers import AutoTokenizer

    def make(template):
        tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
        tokenizer.chat_template = template
        return tokenizer

    return make


def marked(tokenizer, encoded) -> list[str]:
    return tokenizer.convert_ids_to_tokens([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])


def test_derived_spans_match_the_marked_template(bundled_tokenizer):
    """Assistant spans derived by rendering mark exactly the tokens the {% generation %} markers of our
    ChatML training template mark: each trained answer and its end-of-turn token, weight 0 left out."""
    marker = training_tokens(bundled_tokenizer, CHAT, None, CHATML_TRAINING_TEMPLATE)
    ids, mask = derived_assistant_mask(bundled_tokenizer, CHAT, None, bundled_tokenizer.chat_template)
    assert (ids, mask) == (marker["input_ids"], marker["assistant_masks"])
    assert marked(bundled_tokenizer, marker) == ["4", "<|im_end|>"]


def test_template_without_system_turn_gets_it_folded(tokenizer_with):
    """A template that raises on a system turn, or drops it silently, gets the system text at the head
    of the first user turn, as Gemma's template does itself; one that renders it keeps its own way."""
    for template in (NO_SYSTEM_TEMPLATE, SILENT_TEMPLATE):
        tokenizer = tokenizer_with(template)
        assert not takes_system(tokenizer)
        messages, _ = chat_inputs(tokenizer, CHAT)
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[0]["content"] == "Answer briefly.\n\nHello there"
        assert "Answer briefly." in render_text(tokenizer, CHAT)
    assert takes_system(tokenizer_with(CHATML_TRAINING_TEMPLATE))


def test_loss_on_the_answer_and_its_end_token_for_any_template(tokenizer_with):
    """A template without {% generation %} markers that TRL cannot patch trains as it is: the loss
    covers each trained answer and the end-of-turn token the template writes after it."""
    tokenizer = tokenizer_with(NO_SYSTEM_TEMPLATE)
    template = training_chat_template(tokenizer)
    assert template == NO_SYSTEM_TEMPLATE
    encoded = training_tokens(tokenizer, CHAT, None, template)
    assert "".join(marked(tokenizer, encoded)).replace("Ġ", " ").strip() == "4" + tokenizer.eos_token
    assert end_of_turn_token(tokenizer) == tokenizer.eos_token
    rendered = render_text(tokenizer, CHAT)
    assert len(encoded["input_ids"]) == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_template_that_rewrites_earlier_turns_is_refused_with_the_reason(tokenizer_with):
    """A template whose rendering of a turn depends on later turns (it drops the text of every answer
    but the last) cannot have its answer spans derived: a clear error, not a wrong mask."""
    rewriting = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<a>x</a>' }}"
        "{% else %}{{ '<' + m['role'] + '>' + m['content'] + '</' + m['role'] + '>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
    )
    tokenizer = tokenizer_with(rewriting)
    with pytest.raises(ValueError, match="differently alone than in the whole conversation"):
        training_tokens(tokenizer, [{k: v for k, v in m.items() if k != "weight"} for m in CHAT[1:]], None, rewriting)


def tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer of a pretrained base as published: no chat template, no ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["Hello there, what is 2+2? The capital of France is Paris."] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_llama(tokenizer):
    """A randomly initialised one-layer Llama sized to `tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=4, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_base_without_chat_template_gets_chatml_saved_with_it(tmp_path):
    """No chat template: ChatML with its two tokens added, the embeddings resized, `<|im_end|>` an end
    token of generation, all saved with the model, and said in the notes (log and model card)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = tiny_bpe_tokenizer()
    assert tokenizer.chat_template is None and "<|im_end|>" not in tokenizer.get_vocab()
    model = tiny_llama(tokenizer)
    published_vocab = len(tokenizer)
    changed = ready_for_chat(tokenizer, model)
    notes = changed.notes
    assert changed.new_tokens == tuple(tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]))
    assert "no chat template" in notes[0] and "<|im_start|>, <|im_end|> added" in notes[0]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    saved = AutoTokenizer.from_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert saved.chat_template == DEFAULT_CHAT_TEMPLATE
    assert reloaded.get_input_embeddings().weight.shape[0] == len(saved) == published_vocab + 2
    im_end = saved.convert_tokens_to_ids("<|im_end|>")
    assert im_end in reloaded.generation_config.eos_token_id
    assert saved.pad_token is not None
    encoded = training_tokens(saved, CHAT, None, training_chat_template(saved))
    assert marked(saved, encoded)[-1] == "<|im_end|>"
    assert "<|im_start|>assistant\n" in render_text(saved, CHAT[:2], add_generation_prompt=True)


def test_added_chat_tokens_are_trained_by_the_adapter(tmp_path):
    """The embedding rows of the tokens a base model without a template was given start untrained:
    a LoRA training trains exactly those rows (PEFT trainable tokens) and no other embedding."""
    import pandas as pd
    import torch

    from assets.domain.training import TrainingConfig
    from assets.recipes.sft import train as train_sft
    from resources.models import ModelLoader

    tokenizer = tiny_bpe_tokenizer()
    model = tiny_llama(tokenizer)
    loader = ModelLoader(base_model=str(tmp_path / "base"))
    changed = ready_for_chat(tokenizer, model)
    loader.save_base(tokenizer, model, tmp_path / "base", list(changed.notes), list(changed.new_tokens))
    assert loader.new_tokens(str(tmp_path / "base")) == list(changed.new_tokens)
    before = model.get_input_embeddings().weight.detach().clone()

    train = pd.DataFrame({"messages": [CHAT[1:]] * 4, "tools": [None] * 4})
    train["n_tokens"] = [
        len(training_tokens(tokenizer, m, None, training_chat_template(tokenizer))["input_ids"])
        for m in train["messages"]
    ]
    settings = TrainingConfig(
        save_steps=0, sft={"max_steps": 3, "per_device_train_batch_size": 2, "warmup_steps": 0, "learning_rate": 0.05}
    )
    run = train_sft(settings, str(tmp_path / "base"), train, loader, tmp_path / "ckpt", None)
    after = run.trainer.model.merge_and_unload().get_input_embeddings().weight.detach()
    moved = {i for i in range(len(after)) if not torch.equal(before[i], after[i])}
    assert moved == set(changed.new_tokens)


def test_served_model_stops_on_every_declared_end_token():
    """Generation configs that list several end tokens (Llama 3, Qwen 2.5, Gemma 3) are a list, not one id."""
    assert end_tokens([128001, 128008, 128009], 128009) == {128001, 128008, 128009}
    assert end_tokens(2, None) == {2}
    assert end_tokens(None, 7) == {7}


@pytest.mark.e2e
def test_gguf_file_as_base_model(tmp_path):
    """FT_BASE_MODEL as a `.gguf` file (the bundled one itself): the base_model asset dequantizes it into
    a plain folder that trains and answers, as the bundled default does."""
    import dagster as dg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assets.base_model import base_model
    from resources.models import BASE_NOTES_FILE, ModelLoader, bundled_gguf
    from resources.state import StateStore

    gguf = bundled_gguf()
    result = dg.materialize(
        [base_model],
        resources={"models": ModelLoader(base_model=str(gguf)), "state": StateStore(home=str(tmp_path))},
    )
    folder = result.output_for_node("base_model")
    assert json.loads(
        (tmp_path / "artifacts" / "base_model").joinpath(folder.split("/")[-1], BASE_NOTES_FILE).read_text()
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert getattr(model.config, "quantization_config", None) is None  # a plain model: trainable, saveable
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )  # fmt: skip
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
