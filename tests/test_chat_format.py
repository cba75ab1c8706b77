from assets._chat_format import (
    CHATML_TRAINING_TEMPLATE,
    example_key,
    normalize,
    prompt_hash,
    to_messages,
    training_chat_template,
    user_content,
)

ROW = {
    "instruction": "Triage this.",
    "input": "My router broke.",
    "output": '{"a": 1}',
    "system": "Be brief.",
}


def test_messages_have_system_user_assistant_in_order():
    assert to_messages(ROW) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Triage this.\n\nMy router broke."},
        {"role": "assistant", "content": '{"a": 1}'},
    ]


def test_empty_or_missing_input_leaves_the_instruction_alone():
    assert user_content({"instruction": " Say hi ", "input": float("nan")}) == "Say hi"
    assert user_content({"instruction": "Say hi", "input": ""}) == "Say hi"


def test_normalization_ignores_case_and_spacing_only():
    assert normalize("  Hello\n  WORLD ") == "hello world"
    assert example_key(ROW) == example_key({**ROW, "input": "  MY   ROUTER broke. "})
    assert example_key(ROW) != example_key({**ROW, "output": '{"a": 2}'})
    assert prompt_hash(ROW) == prompt_hash({**ROW, "output": "other", "instruction": "TRIAGE this."})
    assert prompt_hash(ROW) != prompt_hash({**ROW, "input": "My phone broke."})


def test_training_template_renders_exactly_like_the_base_template(bundled_tokenizer):
    messages = to_messages(ROW)
    assert training_chat_template(bundled_tokenizer) == CHATML_TRAINING_TEMPLATE
    for msgs, gen in ((messages, False), (messages[:2], True), (messages[1:], False)):
        ours = bundled_tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=gen, chat_template=CHATML_TRAINING_TEMPLATE
        )
        assert ours == bundled_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def test_assistant_mask_covers_the_answer_and_its_end_of_turn_token(bundled_tokenizer):
    enc = bundled_tokenizer.apply_chat_template(
        to_messages(ROW),
        chat_template=CHATML_TRAINING_TEMPLATE,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert bundled_tokenizer.decode(masked) == '{"a": 1}<|im_end|>'
