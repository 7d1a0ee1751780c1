"""Training data: tokenisation with loss masks, and deterministic, resumable batching.

Loss masks. `Example.labels` is aligned with `input_ids` (the Hugging Face convention: the model shifts labels by
one internally, so ``labels[0]`` is never a target); positions without loss hold -100.

- ``text``: the tokenizer's own leading special tokens (a BOS, if it adds one), the text, then EOS; loss on the text
  and the EOS.
- ``prompt_completion``: leading special tokens, prompt, completion, EOS; loss on the completion and the EOS only.
  Prompt and completion are tokenised separately, so the completion's tokens are exactly those the model would
  generate after seeing the prompt.
- ``chat`` with a tokenizer chat template: the conversation is rendered by ``tokenizer.apply_chat_template``.
  Assistant turn i covers the text between ``render(messages[:i], add_generation_prompt=True)`` and
  ``render(messages[:i + 1])``: its content plus whatever the template closes the turn with (end-of-turn token,
  EOS, a newline). Only those tokens carry loss (unless the message has ``"weight": 0``); system and user turns and
  the assistant header never do. The template gets each message's ``role``, ``content`` (text parts joined) and
  ``name`` when given. Each
  partial rendering must be a prefix of the whole conversation's rendering ("prefix-stable"); a template that
  rewrites earlier turns is refused with a `DatasetError` rather than mislabelled.
- ``chat`` without a chat template uses this plain format, after the tokenizer's leading special tokens::

      <|system|>\\n{content}\\n<|user|>\\n{content}\\n<|assistant|>\\n{content}<EOS>\\n<|user|>\\n...

  with loss on each assistant content and the EOS after it (none on an assistant message of ``"weight": 0``); a
  message's ``name`` follows its role: ``<|user|> alice\\n``.

Text after the last loss-carrying token (e.g. a trailing user turn) is dropped: it would cost compute and teach
nothing. Examples longer than ``max_seq_len`` are cut from the right (the beginning is kept); an example left with no
target (no label past position 0) is dropped and counted in `TokenizedData.dropped`.

Batching. `epoch_order` gives a permutation that depends only on (n, seed, epoch). `BatchStream` addresses batches
by a data position ``(epoch, start)``, where ``start`` is the offset of the batch's first example in that epoch's
order, so a trainer that saves the position and later resumes gets exactly the batches it would have seen. The last
batch of an epoch is kept even when partial: ``steps_per_epoch == ceil(len(examples) / batch_size)``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from drlora_core.formats import DatasetError, Format, content_text, read_records

IGNORE_INDEX = -100

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class TokenizedData:
    examples: list[Example]
    dropped: int  # records left with no target after truncation
    truncated: int  # records cut to max_seq_len, dropped or not
    lengths: list[int]  # every record's token count before the cut, in file order (the routing profile's statistics)


@dataclass(frozen=True)
class _Piece:
    """A stretch of one example: `text` is tokenised, then `ids_after` appended; all of it labelled or none."""

    text: str
    labelled: bool
    ids_after: tuple[int, ...] = ()


def tokenize_records(fmt: Format, records: Sequence[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> TokenizedData:
    """Tokenise validated records (as `formats.read_records` returns them; record i is line i + 1)."""
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be at least 2 (one context token and one target), got {max_seq_len}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set one (tokenizer.eos_token = ...) before training")
    prefix = _special_prefix(tokenizer)
    use_template = fmt == "chat" and bool(getattr(tokenizer, "chat_template", None))
    pieces = [
        _pieces(fmt, record, tokenizer, prefix, eos, line=i + 1, use_template=use_template)
        for i, record in enumerate(records)
    ]
    encoded = iter(_encode(tokenizer, [p.text for ps in pieces for p in ps]))

    examples: list[Example] = []
    dropped = truncated = 0
    lengths: list[int] = []
    for ps in pieces:
        input_ids: list[int] = []
        labels: list[int] = []
        for piece in ps:
            ids = next(encoded) + list(piece.ids_after)
            input_ids += ids
            labels += ids if piece.labelled else [IGNORE_INDEX] * len(ids)
        lengths.append(len(input_ids))
        if len(input_ids) > max_seq_len:
            truncated += 1
            input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
        # labels[0] is never a target once the model shifts, so it cannot keep an example alive.
        if labels[1:].count(IGNORE_INDEX) == len(labels) - 1:
            dropped += 1
            continue
        examples.append(Example(input_ids=input_ids, labels=labels))
    if records and not examples:
        raise DatasetError(
            None,
            f"no record has a token to learn from within max_seq_len={max_seq_len}; "
            "raise max_seq_len or shorten the prompts",
        )
    return TokenizedData(examples=examples, dropped=dropped, truncated=truncated, lengths=lengths)


def load_dataset(path: str | os.PathLike[str], tokenizer: Any, max_seq_len: int) -> list[Example]:
    """Validate, read and tokenise a JSONL dataset; dropped and truncated counts are logged."""
    fmt, records = read_records(path)
    data = tokenize_records(fmt, records, tokenizer, max_seq_len)
    if data.dropped or data.truncated:
        log.warning(
            "%s: %d of %d records truncated to max_seq_len=%d, %d dropped for having no target left",
            path, data.truncated, len(records), max_seq_len, data.dropped,
        )
    return data.examples


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad batches with: the pad token, else EOS (padding never carries loss or attention)."""
    for pad in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad is not None:
            return int(pad)
    raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set one before training")


def _pieces(
    fmt: Format, record: dict[str, Any], tokenizer: Any, prefix: tuple[int, ...], eos: int, *, line: int,
    use_template: bool,
) -> list[_Piece]:
    if fmt == "text":
        return [_Piece("", False, prefix), _Piece(record["text"], True, (eos,))]
    if fmt == "prompt_completion":
        return [_Piece("", False, prefix), _Piece(record["prompt"], False),
                _Piece(record["completion"], True, (eos,))]
    messages = [_plain_message(m) for m in record["messages"]]
    weights = [m.get("weight", 1) != 0 for m in record["messages"]]
    pieces = (_template_pieces(messages, weights, tokenizer, line) if use_template
              else _plain_chat_pieces(messages, weights, prefix, eos))
    while pieces and not pieces[-1].labelled:  # a trailing weight-0 turn would cost compute and teach nothing
        pieces.pop()
    return pieces


def _plain_message(message: dict[str, Any]) -> dict[str, str]:
    """A validated message as chat templates take it: role, text content, and name when given (no weight)."""
    plain = {"role": message["role"], "content": content_text(message["content"])}
    if "name" in message:
        plain["name"] = message["name"]
    return plain


def _plain_chat_pieces(messages: list[dict[str, str]], weights: list[bool], prefix: tuple[int, ...],
                       eos: int) -> list[_Piece]:
    pieces = [_Piece("", False, prefix)]
    context = ""
    for message, labelled in zip(messages, weights, strict=True):
        header = f"<|{message['role']}|>" + (f" {message['name']}" if "name" in message else "") + "\n"
        if message["role"] == "assistant":
            pieces += [_Piece(context + header, False), _Piece(message["content"], labelled, (eos,))]
            context = "\n"
        else:
            context += f"{header}{message['content']}\n"
    return pieces


def _template_pieces(messages: list[dict[str, str]], weights: list[bool], tokenizer: Any,
                     line: int) -> list[_Piece]:
    full = _render(tokenizer, messages, generation_prompt=False, line=line)
    pieces: list[_Piece] = []
    done = 0  # characters of `full` already assigned to pieces
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True, line=line)
        through = _render(tokenizer, messages[: i + 1], generation_prompt=False, line=line)
        if not (full.startswith(through) and through.startswith(before) and len(before) >= done):
            raise DatasetError(
                line,
                f"the tokenizer's chat template is not prefix-stable: rendering messages[:{i + 1}] does not "
                "extend the rendering of the turns before it as the whole conversation does, so the assistant "
                f"tokens of messages[{i}] cannot be located; split multi-turn chats into one conversation per "
                "assistant reply, or use a template that renders earlier turns unchanged",
            )
        pieces += [_Piece(full[done : len(before)], False),
                   _Piece(full[len(before) : len(through)], weights[i])]
        done = len(through)
    return pieces


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool, line: int) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja raises its own types, and templates raise_exception() on bad role orders
        raise DatasetError(line, f"the tokenizer's chat template refused this conversation: {e}") from e
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text


def _special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The special tokens the tokenizer puts before a text (e.g. BOS), found by encoding a probe both ways."""
    probe = "hello world"
    plain = _encode(tokenizer, [probe])[0]
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of examples in one epoch: a permutation of range(n) fixed by (n, seed, epoch) alone."""
    # A str seed is hashed with SHA-512, so the order is the same in every process and Python build.
    rng = random.Random(f"drlora:{seed}:{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    return order


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: `input_ids` with pad_id, `attention_mask` 0 and `labels` -100 on padding."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e.input_ids) for e in examples)
    shape = (len(examples), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class BatchStream:
    """Batches addressed by data position (epoch, start); the last, partial batch of an epoch is kept."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int, pad_id: int) -> None:
        if not examples:
            raise ValueError("no examples to batch")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self._cached: tuple[int, list[int]] | None = None  # (epoch, order): batches mostly come epoch by epoch

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def batch_at(self, epoch: int, start: int) -> dict[str, torch.Tensor]:
        self._check(epoch, start)
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, epoch_order(len(self.examples), self.seed, epoch))
        indices = self._cached[1][start : start + self.batch_size]
        return collate([self.examples[i] for i in indices], self.pad_id)

    def next_position(self, epoch: int, start: int) -> tuple[int, int]:
        self._check(epoch, start)
        start += self.batch_size
        return (epoch + 1, 0) if start >= len(self.examples) else (epoch, start)

    def _check(self, epoch: int, start: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be at least 0, got {epoch}")
        if not 0 <= start < len(self.examples):
            raise ValueError(f"start must be in [0, {len(self.examples)}), got {start}")
