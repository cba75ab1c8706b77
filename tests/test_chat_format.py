import pytest

from assets.domain.chat import (
    CHATML_TRAINING_TEMPLATE,
    conversation_text,
    normalize,
    prompt_hash,
    prompt_text,
    prompt_turns,
    training_chat_template,
    training_tokens,
    weighted_mask,
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


def masked_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])


def test_a_weight_0_turn_is_context_not_trained_on(bundled_tokenizer):
    multi = chat() + [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "Done."}]
    multi[2] = {**multi[2], "weight": 0}
    encoded = training_tokens(bundled_tokenizer, multi, None, CHATML_TRAINING_TEMPLATE)
    assert masked_text(bundled_tokenizer, encoded) == "Done.<|im_end|>"
    unweighted = [{k: v for k, v in m.items() if k != "weight"} for m in multi]
    assert encoded["input_ids"] == bundled_tokenizer.apply_chat_template(unweighted)["input_ids"], "same text"
    # A template with markers of its own marks every assistant turn: the weight-0 turn's run is cleared.
    own_markers = CHATML_TRAINING_TEMPLATE.replace(
        " and (message['weight'] is not defined or message['weight'] != 0)", ""
    )
    assert own_markers != CHATML_TRAINING_TEMPLATE
    assert masked_text(bundled_tokenizer, training_tokens(bundled_tokenizer, multi, None, own_markers)) == (
        "Done.<|im_end|>"
    )


def test_weights_are_refused_when_the_template_marks_turns_ambiguously(bundled_tokenizer):
    multi = chat() + [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "Done."}]
    multi[2] = {**multi[2], "weight": 0}
    with pytest.raises(ValueError, match="cannot be left out of the loss"):
        weighted_mask([1, 1, 0, 1, 0, 1], multi)  # three runs for two assistant turns


def test_tool_calls_are_trained_on_and_tool_replies_are_not(bundled_tokenizer):
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = chat()[:2] + [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "rain", "tool_call_id": "c1"},
        {"role": "assistant", "content": "Rain."},
    ]
    encoded = training_tokens(bundled_tokenizer, messages, tools, CHATML_TRAINING_TEMPLATE)
    assert masked_text(bundled_tokenizer, encoded) == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call><|im_end|>Rain.<|im_end|>'
    )
    text = bundled_tokenizer.decode(encoded["input_ids"])
    assert "<tools>" in text and "<|im_start|>tool\nrain<|im_end|>" in text


def test_tool_calls_are_part_of_the_split_and_duplicate_keys():
    def calling(city):
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'},
        }
        turns = [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "x"}]
        return chat()[:2] + turns + [{"role": "assistant", "content": "y"}]

    assert prompt_hash(calling("Oslo")) != prompt_hash(calling("Paris"))
    assert conversation_text(chat()) == 'user: Triage this.\n\nMy router broke.\x1fassistant: {"a": 1}'


def test_an_eval_prompt_is_every_turn_but_the_answer_rendered_with_tools(bundled_tokenizer):
    assert prompt_text(bundled_tokenizer, chat()) == bundled_tokenizer.apply_chat_template(
        chat()[:2], tokenize=False, add_generation_prompt=True
    )
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = chat()[:2] + [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "rain", "tool_call_id": "c1"},
        {"role": "assistant", "content": "Rain."},
    ]
    prompt = prompt_text(bundled_tokenizer, messages, tools)
    assert "<tools>" in prompt and '<tool_call>{"name": "get_weather"' in prompt
    assert prompt.endswith("<|im_start|>tool\nrain<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_text(bundled_tokenizer, messages[:3], tools).endswith(
        "Triage this.\n\nMy router broke.<|im_end|>\n<|im_start|>assistant\n"
    )
