"""Validation of JSONL training datasets; standard library only, so an upload can be checked without torch.

A dataset is UTF-8 JSONL (no byte order mark): one JSON object per line, every line in the same one of three
formats, decided by line 1:

- ``chat``: ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}`` with at least one
  assistant message; a system message may only come first. As in OpenAI's format, ``content`` may also be an array
  of text parts (``[{"type": "text", "text": str}, ...]``, trained as their concatenation), any message may carry a
  ``"name"`` (a string), and an assistant message a ``"weight"`` of 0 or 1 (0: the message is context, not a target;
  at least one assistant message must keep weight 1). Tool use (``"tools"``, ``"functions"``, role ``"tool"``,
  ``"tool_calls"``) is refused as unsupported.
- ``prompt_completion``: ``{"prompt": str, "completion": str}``.
- ``text``: ``{"text": str}``.

The checks are strict on purpose, so that a typo fails at upload rather than silently training on nothing:

- unknown keys are refused, at the top level and inside messages, naming them;
- completion, text and assistant content must contain more than whitespace; prompt, system and user content may be
  empty strings;
- duplicate keys inside one object and the non-standard constants ``NaN``/``Infinity`` are refused;
- one newline (``\\n`` or ``\\r\\n``) may end the file; any blank or whitespace-only line is refused, including extra
  blank lines at the end.

Every refusal is a `DatasetError` naming the first bad line (1-based) and what to fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["chat", "prompt_completion", "text"]
FORMATS: tuple[Format, ...] = ("chat", "prompt_completion", "text")
ROLES: tuple[str, ...] = ("system", "user", "assistant")

DEFAULT_MAX_BYTES = 512 * 2**20
DEFAULT_MAX_LINES = 1_000_000
DEFAULT_MAX_LINE_BYTES = 1 * 2**20
READ_CHUNK = 1 << 20

_KEYS: dict[Format, tuple[str, ...]] = {
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
_MESSAGE_KEYS = ("role", "content", "name", "weight")
# OpenAI's tool-use fields: named as unsupported rather than as unknown keys.
_TOOL_KEYS = ("tools", "functions", "parallel_tool_calls")
_TOOL_MESSAGE_KEYS = ("tool_calls", "function_call", "tool_call_id")
_TOOL_ROLES = ("tool", "function")
_BOM = b"\xef\xbb\xbf"
_EXAMPLES = (
    '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}, '
    '{"prompt": "...", "completion": "..."} or {"text": "..."}'
)


class DatasetError(ValueError):
    """A dataset is unusable; `line` is the first bad line (1-based) or None for the file as a whole."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason if line is None else f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class DatasetSummary:
    format: Format
    lines: int
    bytes: int


class _JsonRefusal(Exception):
    """Raised from json hooks; json.loads would otherwise not let us say why in our own words."""


class LineValidator:
    """Validates a dataset pushed in pieces of any size, as they arrive (an upload being received, a file being
    read): each line is checked once its newline arrives, and an over-long or excess line is refused as soon as
    its first bytes are past the limit, without waiting for the rest. `finish()` checks the last line and answers
    the summary. Memory stays within one line; `keep` (a list) collects the parsed records when given."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, max_lines: int = DEFAULT_MAX_LINES,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, keep: list[dict[str, Any]] | None = None) -> None:
        self.max_bytes, self.max_lines, self.max_line_bytes = max_bytes, max_lines, max_line_bytes
        self.keep = keep
        self.size = 0
        self.lines = 0
        self.format: Format | None = None
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise DatasetError(None, f"the file is over max_bytes={self.max_bytes}; split it or shorten it")
        pieces = data.split(b"\n")
        for piece in pieces[:-1]:
            self._grow(piece)
            self._line(bytes(self._partial))
            self._partial.clear()
        self._grow(pieces[-1])

    def finish(self) -> DatasetSummary:
        if self.size == 0:
            raise DatasetError(None, f"the file is empty; give one JSON object per line, e.g. {_EXAMPLES}")
        if self._partial:
            self._line(bytes(self._partial))
            self._partial.clear()
        assert self.format is not None  # a non-empty file has at least one line
        return DatasetSummary(format=self.format, lines=self.lines, bytes=self.size)

    def _grow(self, piece: bytes) -> None:
        """Add bytes of the line being received, refusing it as soon as it cannot be allowed."""
        if not piece:
            return
        if not self._partial:
            self._check_count(self.lines + 1)
        self._partial += piece
        if len(self._partial) > self.max_line_bytes + 1:  # + 1: a "\r" before the newline does not count
            self._too_long(self.lines + 1)

    def _line(self, raw: bytes) -> None:
        lineno = self.lines + 1
        self._check_count(lineno)
        content = raw[:-1] if raw.endswith(b"\r") else raw
        if len(content) > self.max_line_bytes:
            self._too_long(lineno)
        record = _parse_line(lineno, content)
        fmt = _detect_format(lineno, record)
        if self.format is None:
            self.format = fmt
        elif fmt != self.format:
            raise DatasetError(
                lineno,
                f"this line is in {fmt} format but line 1 is in {self.format} format; use one format per file",
            )
        _check_record(lineno, fmt, record)
        self.lines = lineno
        if self.keep is not None:
            self.keep.append(record)

    def _check_count(self, lineno: int) -> None:
        if lineno > self.max_lines:
            raise DatasetError(lineno, f"too many lines: the limit is max_lines={self.max_lines}; split the dataset")

    def _too_long(self, lineno: int) -> None:
        raise DatasetError(
            lineno, f"the line is longer than max_line_bytes={self.max_line_bytes}; shorten or split this record"
        )


def validate_jsonl(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_lines: int = DEFAULT_MAX_LINES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> DatasetSummary:
    """Check a whole dataset held in memory; raises `DatasetError` at the first problem."""
    validator = LineValidator(max_bytes=max_bytes, max_lines=max_lines, max_line_bytes=max_line_bytes)
    validator.feed(data)
    return validator.finish()


def read_records(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_lines: int = DEFAULT_MAX_LINES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> tuple[Format, list[dict[str, Any]]]:
    """Validate a dataset file and return its format and records; record i is line i + 1."""
    records: list[dict[str, Any]] = []
    validator = LineValidator(max_bytes=max_bytes, max_lines=max_lines, max_line_bytes=max_line_bytes, keep=records)
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            validator.feed(chunk)
    return validator.finish().format, records


def file_format(path: str | os.PathLike[str]) -> Format:
    """The format of a dataset file, from its first line (which decides it); the file is not validated further."""
    with open(path, "rb") as f:
        first = f.readline(DEFAULT_MAX_LINE_BYTES + 1)
    content = first.rstrip(b"\r\n")
    if not content:
        raise DatasetError(1, "the first line is empty; line 1 decides the format")
    return _detect_format(1, _parse_line(1, content))


def _parse_line(lineno: int, content: bytes) -> dict[str, Any]:
    if content.startswith(_BOM):
        where = "the file" if lineno == 1 else "the line"
        raise DatasetError(
            lineno, f"{where} starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM"
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(
            lineno,
            f"not valid UTF-8 (byte 0x{content[e.start]:02x} at byte {e.start + 1} of the line); "
            "save the file as UTF-8",
        ) from None
    if not text.strip():
        raise DatasetError(
            lineno,
            "the line is blank; remove empty lines (only one newline may end the file)",
        )
    try:
        value = json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_refuse_constant)
    except _JsonRefusal as e:
        raise DatasetError(lineno, str(e)) from None
    except json.JSONDecodeError as e:
        raise DatasetError(
            lineno,
            f"not valid JSON ({e.msg} at column {e.colno}); each line must be one complete JSON object",
        ) from None
    except RecursionError:
        raise DatasetError(lineno, "not valid JSON here: the line is nested too deeply; flatten the record") from None
    except ValueError as e:  # what the decoder refuses beyond its syntax, e.g. an integer of too many digits
        raise DatasetError(lineno, f"not valid JSON here ({e}); each line must be one JSON object") from None
    if not isinstance(value, dict):
        raise DatasetError(lineno, f"each line must be a JSON object such as {_EXAMPLES}; got {_kind(value)}")
    if "\\u" in text:  # strictly decoded UTF-8 holds no surrogate, so only an escape can bring one in
        _refuse_surrogates(lineno, value)
    return value


def _refuse_surrogates(lineno: int, value: object) -> None:
    """Refuse strings that UTF-8 cannot encode (a lone surrogate escape such as "\\ud800"): tokenizers fail on
    them later, far from the line. Walked with a stack, as the decoder already bounded the depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise DatasetError(
                    lineno, f"the text holds a lone surrogate escape (\\u{ord(item[e.start]):04x}), which is no "
                    "character and cannot be encoded as UTF-8; remove it or escape a full surrogate pair",
                ) from None


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _JsonRefusal(f"duplicate key {json.dumps(key)} in one object; keep only one")
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> Any:
    raise _JsonRefusal(f"{name} is not valid JSON; use a number or a string")


def _detect_format(lineno: int, record: dict[str, Any]) -> Format:
    matches = [fmt for fmt in FORMATS if any(key in record for key in _KEYS[fmt])]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        keys = ", ".join(json.dumps(k) for k in record) or "none"
        raise DatasetError(
            lineno, f"unknown record format (keys: {keys}); each line must look like {_EXAMPLES}"
        )
    found = " and ".join(f"{fmt} ({', '.join(json.dumps(k) for k in _KEYS[fmt] if k in record)})"
                         for fmt in matches)
    raise DatasetError(lineno, f"the line mixes keys of the {found} formats; use exactly one format")


def _check_record(lineno: int, fmt: Format, record: dict[str, Any]) -> None:
    if fmt == "chat":
        _refuse_tool_use(lineno, record, _TOOL_KEYS, "")
    _refuse_unknown_keys(lineno, record, _KEYS[fmt], "")
    if fmt == "text":
        _require_text(lineno, record, "text", "", non_blank=True)
    elif fmt == "prompt_completion":
        _require_text(lineno, record, "prompt", "", non_blank=False)
        _require_text(lineno, record, "completion", "", non_blank=True)
    else:
        _check_messages(lineno, record)


def _check_messages(lineno: int, record: dict[str, Any]) -> None:
    messages = record["messages"]
    if not isinstance(messages, list):
        raise DatasetError(lineno, f'"messages" must be an array of messages, got {_kind(messages)}')
    if not messages:
        raise DatasetError(lineno, '"messages" is empty; give at least one assistant message')
    for i, message in enumerate(messages):
        where = f"messages[{i}]."
        if not isinstance(message, dict):
            raise DatasetError(
                lineno, f'"messages[{i}]" must be an object with "role" and "content", got {_kind(message)}'
            )
        _refuse_tool_use(lineno, message, _TOOL_MESSAGE_KEYS, where)
        _refuse_unknown_keys(lineno, message, _MESSAGE_KEYS, where)
        role = message.get("role")
        if role is None:
            raise DatasetError(lineno, f'"{where}role" is missing; use one of {", ".join(ROLES)}')
        if role in _TOOL_ROLES:
            raise DatasetError(lineno, f'"{where}role" is {json.dumps(role)}: tool use is not supported; remove '
                                       f'tool messages (roles {", ".join(ROLES)} are)')
        if not isinstance(role, str) or role not in ROLES:
            shown = json.dumps(role) if isinstance(role, str) else _kind(role)
            raise DatasetError(lineno, f'"{where}role" must be one of {", ".join(ROLES)}, got {shown}')
        if role == "system" and i > 0:
            raise DatasetError(lineno, f'"{where}role" is "system", but a system message may only come first')
        _check_content(lineno, message, where, non_blank=role == "assistant")
        _check_name(lineno, message, where)
        _check_weight(lineno, message, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(
            lineno, 'no message has role "assistant"; a chat needs at least one assistant reply to learn from'
        )
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        raise DatasetError(lineno, 'every assistant message has "weight": 0; give at least one weight 1 to learn from')


def content_text(content: str | list[dict[str, str]]) -> str:
    """A message's text: the string itself, or its text parts joined (as validated by `_check_content`)."""
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def _refuse_tool_use(lineno: int, obj: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    if found := [k for k in keys if k in obj]:
        raise DatasetError(lineno, f"{', '.join(json.dumps(where + k) for k in found)}: tool use is not supported; "
                                   "remove it (training learns from the messages' text)")


def _check_content(lineno: int, message: dict[str, Any], where: str, *, non_blank: bool) -> None:
    """A string, or OpenAI's array of text parts; blankness is judged on the joined text."""
    content = message.get("content")
    if not isinstance(content, list):
        _require_text(lineno, message, "content", where, non_blank=non_blank)
        return
    for j, part in enumerate(content):
        at = f"{where}content[{j}]."
        if not isinstance(part, dict):
            raise DatasetError(lineno, f'"{where}content[{j}]" must be an object such as {{"type": "text", '
                                       f'"text": "..."}}, got {_kind(part)}')
        if part.get("type") != "text":
            shown = json.dumps(part["type"]) if isinstance(part.get("type"), str) else "missing"
            raise DatasetError(lineno, f'"{at}type" is {shown}: only "text" content parts are supported')
        _refuse_unknown_keys(lineno, part, ("type", "text"), at)
        _require_text(lineno, part, "text", at, non_blank=False)
    if non_blank and not content_text(content).strip():
        raise DatasetError(lineno, f'"{where}content" is empty or only whitespace; give the text to learn')


def _check_name(lineno: int, message: dict[str, Any], where: str) -> None:
    if "name" in message and not isinstance(message["name"], str):
        raise DatasetError(lineno, f'"{where}name" must be a string, got {_kind(message["name"])}')


def _check_weight(lineno: int, message: dict[str, Any], where: str) -> None:
    if "weight" not in message:
        return
    weight = message["weight"]
    if message["role"] != "assistant":
        raise DatasetError(lineno, f'"{where}weight" is only allowed on assistant messages')
    if isinstance(weight, bool) or weight not in (0, 1):
        shown = json.dumps(weight) if isinstance(weight, int | float | str) else _kind(weight)
        raise DatasetError(lineno, f'"{where}weight" must be 0 or 1, got {shown}')


def _refuse_unknown_keys(lineno: int, obj: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        names = ", ".join(json.dumps(where + k) for k in unknown)
        expected = ", ".join(json.dumps(where + k) for k in allowed)
        raise DatasetError(lineno, f"unknown key(s) {names}; only {expected} are allowed here")


def _require_text(lineno: int, obj: dict[str, Any], key: str, where: str, *, non_blank: bool) -> None:
    name = f'"{where}{key}"'
    if key not in obj:
        raise DatasetError(lineno, f"{name} is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise DatasetError(lineno, f"{name} must be a string, got {_kind(value)}")
    if non_blank and not value.strip():
        raise DatasetError(lineno, f"{name} is empty or only whitespace; give the text to learn")


def _kind(value: object) -> str:
    """JSON's name for a parsed value's type, as a user who wrote the file would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
