"""OpenAI's chat line shapes (issue 10, finding 7): per-message `weight`, `name`, content as an array of text parts,
and tool use refused as unsupported; validated at upload (`formats`) and honoured by tokenisation (`data`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from drlora_core.data import tokenize_records
from drlora_core.formats import DatasetError, validate_jsonl
from tests.engine.test_data import CHATML, labelled_runs, make_tokenizer, only

USER = {"role": "user", "content": "hello"}


def assistant(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


def line(*messages: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"messages": list(messages), **extra}).encode() + b"\n"


def refused(data: bytes) -> str:
    with pytest.raises(DatasetError) as info:
        validate_jsonl(data)
    assert info.value.line == 1
    return info.value.reason


def test_openai_message_fields_are_accepted() -> None:
    parts = [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]
    data = line({"role": "system", "content": [{"type": "text", "text": "be brief"}], "name": "rules"},
                {**USER, "name": "alice"}, assistant("draft", weight=0), USER, assistant(parts, weight=1))
    assert validate_jsonl(data).format == "chat"


@pytest.mark.parametrize(("data", "needle"), [
    (line(USER, assistant("a"), tools=[{"type": "function"}]), '"tools": tool use is not supported'),
    (line(USER, assistant("a"), functions=[]), '"functions": tool use is not supported'),
    (line(USER, {"role": "tool", "content": "42", "tool_call_id": "c"}, assistant("a")),
     '"messages[1].tool_call_id": tool use is not supported'),
    (line(USER, {"role": "tool", "content": "42"}, assistant("a")),
     '"messages[1].role" is "tool": tool use is not supported'),
    (line(USER, assistant("a", tool_calls=[])), '"messages[1].tool_calls": tool use is not supported'),
    (line(USER, assistant("a", weight=2)), '"messages[1].weight" must be 0 or 1, got 2'),
    (line(USER, assistant("a", weight=True)), '"messages[1].weight" must be 0 or 1, got true'),
    (line({**USER, "weight": 1}, assistant("a")), '"messages[0].weight" is only allowed on assistant messages'),
    (line(USER, assistant("a", weight=0)), 'every assistant message has "weight": 0'),
    (line(USER, assistant([{"type": "text", "text": " "}])), '"messages[1].content" is empty'),
    (line(USER, assistant([{"type": "text"}])), '"messages[1].content[0].text" is missing'),
    (line(USER, assistant(["a"])), '"messages[1].content[0]" must be an object'),
    (line(USER, assistant([{"type": "text", "text": "a", "cache": 1}])), 'unknown key(s) "messages[1].content[0].cache"'),
])
def test_unsupported_or_malformed_shapes_are_refused_naming_them(data: bytes, needle: str) -> None:
    assert needle in refused(data)


@pytest.fixture(scope="module")
def plain() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def chatml() -> PreTrainedTokenizerFast:
    return make_tokenizer(chat_template=CHATML)


def records(data: bytes) -> list[dict[str, Any]]:
    validate_jsonl(data)
    return [json.loads(data)]


def test_weight_zero_messages_carry_no_loss(plain: PreTrainedTokenizerFast,
                                            chatml: PreTrainedTokenizerFast) -> None:
    data = line(USER, assistant("the quick fox", weight=0), USER, assistant("lazy dog"))
    example = only(tokenize_records("chat", records(data), plain, 256))
    assert labelled_runs(plain, example) == ["lazy dog<eos>"]
    assert "the quick fox<eos>" in plain.decode(example.input_ids)  # still seen, as context
    templated = only(tokenize_records("chat", records(data), chatml, 256))
    assert labelled_runs(chatml, templated) == ["lazy dog<|im_end|>\n"]


def test_a_trailing_weight_zero_turn_is_not_kept(plain: PreTrainedTokenizerFast) -> None:
    data = line(USER, assistant("lazy dog"), USER, assistant("the quick fox", weight=0))
    example = only(tokenize_records("chat", records(data), plain, 256))
    assert "quick" not in plain.decode(example.input_ids)


def test_text_parts_train_as_their_concatenation(plain: PreTrainedTokenizerFast,
                                                  chatml: PreTrainedTokenizerFast) -> None:
    as_parts = line({"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]},
                    assistant([{"type": "text", "text": "lazy "}, {"type": "text", "text": "dog"}]))
    as_text = line(USER, assistant("lazy dog"))
    for tok in (plain, chatml):
        assert only(tokenize_records("chat", records(as_parts), tok, 256)) == \
            only(tokenize_records("chat", records(as_text), tok, 256))


def test_names_follow_the_role_in_the_plain_format(plain: PreTrainedTokenizerFast) -> None:
    data = line({**USER, "name": "alice"}, assistant("hi", name="bot"))
    example = only(tokenize_records("chat", records(data), plain, 256))
    assert plain.decode(example.input_ids) == "<|user|> alice\nhello\n<|assistant|> bot\nhi<eos>"
    assert labelled_runs(plain, example) == ["hi<eos>"]
