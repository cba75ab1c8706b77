"""The base models of other families (tests/model_families.py): each folder loads, renders its published chat
format, stops where the family stops, runs forward and generates."""

import pytest

from tests.model_families import (
    FAMILIES,
    FAMILY_SPECS,
    TEMPLATE_SHA256,
    build_family_model,
    model_class_name,
    template_sha256,
)

SYSTEM = "Answer in one word."
QUESTION = "What is the capital of France?"
ANSWER = "Paris."


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, bundled_tokenizer_dir):
    root = tmp_path_factory.mktemp("families")
    return {name: build_family_model(name, root / name, base_tokenizer=bundled_tokenizer_dir) for name in FAMILIES}


@pytest.fixture(scope="session", params=FAMILIES)
def loaded(request, family_dirs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = request.param
    folder = family_dirs[name]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    return FAMILY_SPECS[name], folder, tokenizer, model


def conversation(with_system: bool = True):
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    return ([{"role": "system", "content": SYSTEM}] if with_system else []) + messages


def test_the_families():
    assert FAMILIES == ("llama3", "qwen2.5", "gemma3", "mistral", "phi3", "no-template")
    for name, spec in FAMILY_SPECS.items():
        assert spec.name == name
        assert spec.end_of_turn in spec.special_tokens
        assert set(spec.generation_eos) <= set(spec.special_tokens)


def test_templates_are_the_verbatim_copies():
    for name, digest in TEMPLATE_SHA256.items():
        assert template_sha256(FAMILY_SPECS[name].chat_template) == digest, name
    assert FAMILY_SPECS["no-template"].chat_template is None
    # Spot checks of what makes each format its own.
    assert "Cutting Knowledge Date: December 2023" in FAMILY_SPECS["llama3"].chat_template
    assert "You are Qwen, created by Alibaba Cloud." in FAMILY_SPECS["qwen2.5"].chat_template
    assert "Conversation roles must alternate" in FAMILY_SPECS["gemma3"].chat_template
    assert "' [INST] '" in FAMILY_SPECS["mistral"].chat_template
    assert "'<|assistant|>\n'" in FAMILY_SPECS["phi3"].chat_template


def test_folder_loads_as_the_family(loaded):
    spec, folder, tokenizer, model = loaded
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    assert type(model).__name__ == model_class_name(spec.name)
    assert model.config.model_type == spec.architecture
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings >= 4096
    assert (tokenizer.bos_token, tokenizer.eos_token) == (spec.bos_token, spec.eos_token)
    assert (tokenizer.pad_token, tokenizer.unk_token) == (spec.pad_token, spec.unk_token)
    assert tokenizer.chat_template == spec.chat_template
    for token in spec.special_tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and token in tokenizer.all_special_tokens + list(tokenizer.extra_special_tokens), token
    for token in spec.added_tokens:  # added, one id each, but not special: decoding keeps them
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True) == token
    starts_with_bos = tokenizer("Hello").input_ids[0] == tokenizer.bos_token_id
    assert starts_with_bos == spec.add_bos


def test_generation_config_eos_list_is_the_published_one(loaded):
    from transformers import GenerationConfig

    spec, folder, tokenizer, _ = loaded
    eos = GenerationConfig.from_pretrained(folder).eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert eos == [tokenizer.convert_tokens_to_ids(t) for t in spec.generation_eos]
    assert tokenizer.unk_token_id not in eos or spec.unk_token in spec.generation_eos
    # Generation stops at the end of a turn.
    assert tokenizer.convert_tokens_to_ids(spec.end_of_turn) in eos


def test_template_ends_the_answer_with_the_end_of_turn_token(loaded):
    spec, _, tokenizer, _ = loaded
    if spec.chat_template is None:
        with pytest.raises(ValueError):
            tokenizer.apply_chat_template(conversation(), tokenize=False)
        return
    text = tokenizer.apply_chat_template(conversation(), tokenize=False)
    assert SYSTEM in text and QUESTION in text
    assert ANSWER + spec.end_of_turn in text
    if spec.bos_token and spec.add_bos:
        assert text.startswith(spec.bos_token)  # the template writes it: do not let the tokenizer add another
    # The turn the model learns to answer in: the generation prompt is the text right before the answer.
    prompt = tokenizer.apply_chat_template(conversation()[:-1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt.rstrip(" "))
    assert text.index(ANSWER) >= len(prompt.rstrip(" "))


def test_system_turn_native_or_folded_into_the_first_user_turn(loaded):
    spec, _, tokenizer, _ = loaded
    if spec.chat_template is None:
        return
    with_system = tokenizer.apply_chat_template(conversation(), tokenize=False)
    folded = [{"role": "user", "content": SYSTEM + "\n\n" + QUESTION}, {"role": "assistant", "content": ANSWER}]
    folded_text = tokenizer.apply_chat_template(folded, tokenize=False)
    assert (with_system == folded_text) == (not spec.system_turn)


def test_strict_alternation(loaded):
    from jinja2.exceptions import TemplateError

    spec, _, tokenizer, _ = loaded
    if spec.chat_template is None:
        return
    two_users = [{"role": "user", "content": QUESTION}, {"role": "user", "content": QUESTION}]
    if spec.strict_alternation:
        with pytest.raises(TemplateError, match="(?i)conversation roles must alternate"):
            tokenizer.apply_chat_template(two_users, tokenize=False)
    else:
        assert tokenizer.apply_chat_template(two_users, tokenize=False).count(QUESTION) == 2


def test_forward_pass_and_loss(loaded):
    import torch

    spec, _, tokenizer, model = loaded
    if spec.chat_template is None:
        text = f"{QUESTION} {ANSWER}{spec.eos_token}"
    else:
        text = tokenizer.apply_chat_template(conversation(), tokenize=False)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)


def test_generate_a_few_tokens(loaded):
    spec, _, tokenizer, model = loaded
    if spec.chat_template is None:
        batch = tokenizer(QUESTION, return_tensors="pt")
    else:
        batch = tokenizer.apply_chat_template(
            conversation()[:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    prompt_length = batch["input_ids"].shape[1]
    assert prompt_length < out.shape[1] <= prompt_length + 4
    assert isinstance(tokenizer.decode(out[0, prompt_length:]), str)
