"""Dataset validation: every refusal names the first bad line (1-based) and what to fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drlora_core.formats import (
    DatasetError,
    DatasetSummary,
    LineValidator,
    read_records,
    validate_jsonl,
)

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"}]}
PC = {"prompt": "2+2=", "completion": "4"}
TEXT = {"text": "Once upon a time."}


def jsonl(*records: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def refusal(data: bytes, **limits: int) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        validate_jsonl(data, **limits)
    return info.value


# --- good files ---


@pytest.mark.parametrize(("record", "fmt"), [(CHAT, "chat"), (PC, "prompt_completion"), (TEXT, "text")])
def test_each_format_is_recognised(record: dict, fmt: str) -> None:
    data = jsonl(record, record, record)
    assert validate_jsonl(data) == DatasetSummary(format=fmt, lines=3, bytes=len(data))


def test_trailing_newline_is_optional() -> None:
    with_newline = jsonl(TEXT, TEXT)
    assert validate_jsonl(with_newline).lines == 2
    assert validate_jsonl(with_newline[:-1]).lines == 2


def test_crlf_line_ends_are_accepted() -> None:
    data = jsonl(PC, PC).replace(b"\n", b"\r\n")
    assert validate_jsonl(data).lines == 2


def test_optional_strings_may_be_empty() -> None:
    chat = {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}]}
    assert validate_jsonl(jsonl({"prompt": "", "completion": "x"})).format == "prompt_completion"
    assert validate_jsonl(jsonl(chat)).format == "chat"


def test_chat_without_system_and_multi_turn_and_trailing_user() -> None:
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
                         {"role": "user", "content": "e"}]}
    assert validate_jsonl(jsonl(chat)).format == "chat"


def test_unicode_content_is_fine() -> None:
    data = json.dumps({"text": "héllo — 世界 🙂"}, ensure_ascii=False).encode() + b"\n"
    assert validate_jsonl(data).bytes == len(data)


# --- whole-file refusals ---


def test_empty_file() -> None:
    err = refusal(b"")
    assert err.line is None
    assert "empty" in str(err)


def test_file_over_max_bytes() -> None:
    data = jsonl(TEXT, TEXT)
    err = refusal(data, max_bytes=len(data) - 1)
    assert err.line is None
    assert f"max_bytes={len(data) - 1}" in str(err)
    assert validate_jsonl(data, max_bytes=len(data)).lines == 2


def test_bom_is_refused_on_line_1() -> None:
    err = refusal(b"\xef\xbb\xbf" + jsonl(TEXT))
    assert err.line == 1
    assert "BOM" in err.reason
    assert "without BOM" in str(err)


def test_bom_inside_the_file_is_named() -> None:
    err = refusal(jsonl(TEXT) + b"\xef\xbb\xbf" + jsonl(TEXT))
    assert err.line == 2
    assert "BOM" in err.reason


# --- line refusals ---


def test_bad_utf8_names_the_line() -> None:
    err = refusal(jsonl(TEXT, TEXT) + b'{"text": "caf\xe9"}\n')
    assert err.line == 3
    assert "UTF-8" in err.reason
    assert str(err).startswith("line 3: ")


@pytest.mark.parametrize("blank", [b"\n", b"   \n", b"\t\r\n"])
def test_blank_line_in_between(blank: bytes) -> None:
    err = refusal(jsonl(TEXT) + blank + jsonl(TEXT))
    assert err.line == 2
    assert "blank" in err.reason


def test_extra_blank_lines_at_the_end() -> None:
    assert refusal(jsonl(TEXT, TEXT) + b"\n").line == 3
    assert refusal(jsonl(TEXT) + b"\n\n").line == 2
    assert refusal(jsonl(TEXT) + b"  ").line == 2


def test_a_lone_newline_is_a_blank_line_1() -> None:
    assert refusal(b"\n").line == 1


def test_not_json() -> None:
    err = refusal(jsonl(TEXT) + b'{"text": "unterminated}\n')
    assert err.line == 2
    assert "not valid JSON" in err.reason


def test_two_objects_on_one_line() -> None:
    err = refusal(jsonl(TEXT) + b'{"text": "a"} {"text": "b"}\n')
    assert err.line == 2
    assert "not valid JSON" in err.reason


@pytest.mark.parametrize(("line", "kind"), [(b"[1, 2]", "array"), (b'"text"', "string"), (b"3", "number"),
                                            (b"null", "null"), (b"true", "boolean")])
def test_value_that_is_not_an_object(line: bytes, kind: str) -> None:
    err = refusal(jsonl(TEXT) + line + b"\n")
    assert err.line == 2
    assert f"got {kind}" in err.reason
    assert "JSON object" in err.reason


def test_nan_is_refused() -> None:
    err = refusal(b'{"prompt": "a", "completion": NaN}\n')
    assert err.line == 1
    assert "NaN" in err.reason


def test_duplicate_key_is_refused() -> None:
    err = refusal(jsonl(PC) + b'{"prompt": "a", "prompt": "b", "completion": "c"}\n')
    assert err.line == 2
    assert 'duplicate key "prompt"' in err.reason


def test_unknown_format() -> None:
    err = refusal(jsonl(TEXT) + jsonl({"input": "a", "output": "b"}))
    assert err.line == 2
    assert '"input"' in err.reason
    assert "unknown record format" in err.reason


def test_keys_of_two_formats_on_one_line() -> None:
    err = refusal(jsonl({"text": "a", "prompt": "b", "completion": "c"}))
    assert err.line == 1
    assert "prompt_completion" in err.reason
    assert "text" in err.reason


def test_format_mixing_names_the_line_and_both_formats() -> None:
    err = refusal(jsonl(PC, PC, PC, TEXT))
    assert err.line == 4
    assert "text format" in err.reason
    assert "line 1 is in prompt_completion format" in err.reason


def test_wrong_type_reads_like_the_docs() -> None:
    err = refusal(jsonl(PC, PC, PC, PC, PC, PC, {"prompt": "a", "completion": 4}))
    assert str(err) == 'line 7: "completion" must be a string, got number'
    assert err.line == 7
    assert err.reason == '"completion" must be a string, got number'


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"prompt": "a"}, '"completion" is missing'),
        ({"completion": "a"}, '"prompt" is missing'),
        ({"prompt": None, "completion": "a"}, '"prompt" must be a string, got null'),
        ({"prompt": "a", "completion": ""}, '"completion" is empty'),
        ({"prompt": "a", "completion": " \n"}, '"completion" is empty'),
        ({"prompt": "a", "completion": "b", "weight": 2}, 'unknown key(s) "weight"'),
        ({"text": ""}, '"text" is empty'),
        ({"text": ["a"]}, '"text" must be a string, got array'),
        ({"text": "a", "id": 1, "source": "x"}, 'unknown key(s) "id", "source"'),
    ],
)
def test_prompt_completion_and_text_shapes(record: dict, needle: str) -> None:
    first = TEXT if "text" in record else PC
    err = refusal(jsonl(first, record))
    assert err.line == 2
    assert needle in err.reason


def _chat(*messages: object) -> dict:
    return {"messages": list(messages)}


USER = {"role": "user", "content": "q"}
ASSISTANT = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"messages": "hi"}, '"messages" must be an array of messages, got string'),
        ({"messages": []}, '"messages" is empty'),
        ({"messages": [USER, ASSISTANT], "id": 3}, 'unknown key(s) "id"'),
        (_chat(USER, "a"), '"messages[1]" must be an object'),
        (_chat(USER, {"content": "a"}), '"messages[1].role" is missing'),
        (_chat(USER, {"role": "bot", "content": "a"}), '"messages[1].role" must be one of system, user, '
                                                       'assistant, got "bot"'),
        (_chat(USER, {"role": 1, "content": "a"}), '"messages[1].role" must be one of system, user, assistant, '
                                                   "got number"),
        (_chat(USER, {"role": "assistant"}), '"messages[1].content" is missing'),
        (_chat(USER, {"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]}),
         '"messages[1].content[0].type" is "image_url": only "text" content parts'),  # text parts: test_chat_parity
        (_chat(USER, {"role": "assistant", "content": "  "}), '"messages[1].content" is empty'),
        (_chat(USER, {"role": "assistant", "content": "a", "name": 7}), '"messages[1].name" must be a string'),
        (_chat(USER, {"role": "system", "content": "s"}, ASSISTANT), "a system message may only come first"),
        (_chat(USER, USER), 'no message has role "assistant"'),
    ],
)
def test_chat_shapes(record: dict, needle: str) -> None:
    err = refusal(jsonl(CHAT, CHAT, record))
    assert err.line == 3
    assert needle in err.reason


def test_too_many_lines() -> None:
    data = jsonl(TEXT, TEXT, TEXT, TEXT)
    assert validate_jsonl(data, max_lines=4).lines == 4
    err = refusal(data, max_lines=3)
    assert err.line == 4
    assert "max_lines=3" in err.reason


def test_over_long_line() -> None:
    short, long = jsonl({"text": "ab"}), jsonl({"text": "abcdefgh"})
    limit = len(short) - 1  # without its newline
    assert validate_jsonl(short + short, max_line_bytes=limit).lines == 2
    assert validate_jsonl((short + short).replace(b"\n", b"\r\n"), max_line_bytes=limit).lines == 2
    err = refusal(short + long + short, max_line_bytes=limit)
    assert err.line == 2
    assert f"max_line_bytes={limit}" in err.reason
    assert refusal(short + long[:-1], max_line_bytes=limit).line == 2  # last line, no newline


# --- lines no decoder can take (issue 10, finding 5) ---


@pytest.mark.parametrize("line", [
    b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested past the decoder's recursion limit
    b"[" * 100_000,
    b'{"text": "ok", "n": ' + b"9" * 5000 + b"}",  # past Python's integer-digits limit: a ValueError of its own
])
def test_a_line_the_decoder_cannot_take_names_its_line(line: bytes) -> None:
    err = refusal(jsonl(TEXT) + line + b"\n")
    assert err.line == 2
    assert "JSON" in err.reason


@pytest.mark.parametrize("escaped", [r"\ud800", r"\uDFFF", r"x\ud83dy"])
@pytest.mark.parametrize("template", [
    '{"text": "%s"}',
    '{"text": "a", "%s": 1}',
    '{"messages": [{"role": "user", "content": "%s"}, {"role": "assistant", "content": "b"}]}',
])
def test_text_that_cannot_be_encoded_is_refused_with_its_line(escaped: str, template: str) -> None:
    err = refusal(jsonl(TEXT) + (template % escaped).encode() + b"\n")
    assert err.line == 2
    assert "surrogate" in err.reason


def test_a_valid_escaped_surrogate_pair_is_fine() -> None:
    assert validate_jsonl(b'{"text": "\\ud83d\\ude00"}\n').lines == 1


# --- pushed in pieces, as an upload arrives ---


def test_pieces_of_any_size_give_the_same_result() -> None:
    data = jsonl(CHAT, CHAT, CHAT).replace(b"\n", b"\r\n", 1)
    whole = validate_jsonl(data)
    for size in (1, 2, 7, 64):
        validator = LineValidator()
        for i in range(0, len(data), size):
            validator.feed(data[i:i + size])
        assert validator.finish() == whole


def test_an_excess_line_is_refused_as_its_first_byte_arrives() -> None:
    validator = LineValidator(max_lines=2)
    validator.feed(jsonl(TEXT, TEXT))
    with pytest.raises(DatasetError, match="line 3: too many lines"):
        validator.feed(b"{")


def test_an_over_long_line_is_refused_before_its_newline_arrives() -> None:
    validator = LineValidator(max_line_bytes=100)
    validator.feed(jsonl(TEXT))
    with pytest.raises(DatasetError, match="line 2: the line is longer"):
        validator.feed(b"x" * 102)


def test_a_bad_line_is_refused_when_its_newline_arrives() -> None:
    validator = LineValidator()
    validator.feed(jsonl(TEXT) + b"oops")
    with pytest.raises(DatasetError, match="line 2"):
        validator.feed(b"\n")


# --- files ---


def test_file_variants_agree_with_bytes(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(PC, {"prompt": "", "completion": "x"}))
    fmt, records = read_records(path)
    assert fmt == validate_jsonl(path.read_bytes()).format == "prompt_completion"
    assert records == [PC, {"prompt": "", "completion": "x"}]


def test_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(TEXT, TEXT) + b"oops\n")
    with pytest.raises(DatasetError) as info:
        read_records(path)
    assert info.value.line == 3


def test_file_limits(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(TEXT, TEXT, TEXT))
    with pytest.raises(DatasetError, match="max_bytes=10"):
        read_records(path, max_bytes=10)
    with pytest.raises(DatasetError, match="line 3: too many lines"):
        read_records(path, max_lines=2)
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        read_records(path)


def test_formats_imports_only_the_standard_library() -> None:
    code = (
        "import sys, drlora_core.formats\n"
        "bad = [m for m in ('torch', 'transformers', 'tokenizers', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
