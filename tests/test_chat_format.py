from assets.domain.chat import (
    CHATML_TRAINING_TEMPLATE,
    normalize,
    prompt_hash,
    prompt_turns,
    training_chat_template,
    with_system,
)


def chat(user="Triage this.\n\nMy router broke.", answer='{"a": 1}', system="Be brief."):
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]


def test_system_prompt_is_added_only_when_missing():
    assert with_system(chat()[1:], "Default.")[0] == {"role": "system", "content": "Default."}
    assert with_system(chat(), "Default.") == chat()


def test_prompt_turns_drop_the_system_and_the_final_answer():
    assert prompt_turns(chat()) == [chat()[1]]
    assert prompt_turns(chat()[:2]) == [chat()[1]]


def test_split_hash_depends_on_the_normalized_prompt_only():
    assert normalize("  Hello\n  WORLD ") == "hello world"
    assert prompt_hash(chat()) == prompt_hash(chat(user="  TRIAGE this.\n\nmy ROUTER   broke.", answer="x"))
    assert prompt_hash(chat()) == prompt_hash(chat(system="Other system prompt."))
    assert prompt_hash(chat()) != prompt_hash(chat(user="Triage this.\n\nMy phone broke."))


def test_training_template_renders_exactly_like_the_base_template(bundled_tokenizer):
    messages = chat()
    assert training_chat_template(bundled_tokenizer) == CHATML_TRAINING_TEMPLATE
    multi = messages + [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "Done."}]
    for msgs, gen in ((messages, False), (messages[:2], True), (messages[1:], False), (multi, False)):
        ours = bundled_tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=gen, chat_template=CHATML_TRAINING_TEMPLATE
        )
        assert ours == bundled_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def test_assistant_mask_covers_every_answer_and_its_end_of_turn_token(bundled_tokenizer):
    multi = chat() + [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "Done."}]
    enc = bundled_tokenizer.apply_chat_template(
        multi, chat_template=CHATML_TRAINING_TEMPLATE, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert bundled_tokenizer.decode(masked) == '{"a": 1}<|im_end|>Done.<|im_end|>'
