"""Tokenisation with loss masks and deterministic batching, on a tiny byte-level BPE tokenizer built here."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from drlora_core.data import (
    IGNORE_INDEX,
    BatchStream,
    Example,
    collate,
    epoch_order,
    load_dataset,
    pad_token_id,
    tokenize_records,
)
from drlora_core.formats import DatasetError

SPECIALS = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you? I am fine, thank you.",
    "system user assistant: answer the question briefly",
    "two plus two is four; the capital of France is Paris",
]


def make_tokenizer(*, bos: bool = False, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def chat_tok() -> PreTrainedTokenizerFast:
    return make_tokenizer(chat_template=CHATML)


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def labelled_runs(tokenizer: Any, example: Example) -> list[str]:
    """The decoded text of each maximal run of labelled positions."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in example.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def only(data: Any) -> Example:
    assert data.dropped == 0
    assert len(data.examples) == 1
    return data.examples[0]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# --- text and prompt/completion ---


def test_text_is_all_loss_and_ends_with_eos(tok: PreTrainedTokenizerFast) -> None:
    example = only(tokenize_records("text", [{"text": "the lazy dog"}], tok, 64))
    expected = [*ids(tok, "the lazy dog"), tok.eos_token_id]
    assert example.input_ids == expected
    assert example.labels == expected


def test_tokenizer_bos_is_kept_without_loss() -> None:
    tok = make_tokenizer(bos=True)
    example = only(tokenize_records("text", [{"text": "hello world"}], tok, 64))
    body = [*ids(tok, "hello world"), tok.eos_token_id]
    assert example.input_ids == [tok.bos_token_id, *body]
    assert example.labels == [IGNORE_INDEX, *body]


def test_prompt_completion_masks_the_prompt(tok: PreTrainedTokenizerFast) -> None:
    record = {"prompt": "two plus two is", "completion": " four"}
    example = only(tokenize_records("prompt_completion", [record], tok, 64))
    prompt, completion = ids(tok, "two plus two is"), ids(tok, " four")
    assert example.input_ids == [*prompt, *completion, tok.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + [*completion, tok.eos_token_id]


def test_prompt_completion_with_bos_and_empty_prompt() -> None:
    tok = make_tokenizer(bos=True)
    example = only(tokenize_records("prompt_completion", [{"prompt": "", "completion": "Paris"}], tok, 64))
    assert example.input_ids == [tok.bos_token_id, *ids(tok, "Paris"), tok.eos_token_id]
    assert example.labels == [IGNORE_INDEX, *ids(tok, "Paris"), tok.eos_token_id]


# --- chat ---


def test_chat_template_labels_only_the_assistant_turn(chat_tok: PreTrainedTokenizerFast) -> None:
    messages = [{"role": "system", "content": "answer briefly"}, user("how are you?"), assistant("I am fine.")]
    example = only(tokenize_records("chat", [{"messages": messages}], chat_tok, 128))
    assert chat_tok.decode(example.input_ids) == chat_tok.apply_chat_template(messages, tokenize=False)
    assert labelled_runs(chat_tok, example) == ["I am fine.<|im_end|>\n"]
    prompt = chat_tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    n_prompt = len(ids(chat_tok, prompt))
    assert example.input_ids[:n_prompt] == ids(chat_tok, prompt)  # the prompt as it is seen at inference
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]


def test_multi_turn_chat_labels_every_assistant_turn_and_no_user_turn(chat_tok: PreTrainedTokenizerFast) -> None:
    messages = [user("hello"), assistant("hello world"), user("two plus two?"), assistant("four"),
                user("and the capital of France?")]
    example = only(tokenize_records("chat", [{"messages": messages}], chat_tok, 256))
    assert labelled_runs(chat_tok, example) == ["hello world<|im_end|>\n", "four<|im_end|>\n"]
    # The trailing user turn carries no loss, so it is not kept.
    assert chat_tok.decode(example.input_ids) == chat_tok.apply_chat_template(messages[:4], tokenize=False)
    unlabelled = [i for i, label in zip(example.input_ids, example.labels, strict=True) if label == IGNORE_INDEX]
    text = chat_tok.decode(unlabelled)
    assert "two plus two?" in text
    assert "four" not in text
    assert text.count("<|im_start|>assistant\n") == 2


def test_template_that_is_not_prefix_stable_is_refused() -> None:
    # Marks the last message, so earlier turns render differently once the conversation goes on.
    template = CHATML.replace(
        "{{ m['content'] }}", "{{ m['content'] }}{% if loop.last and m['role'] == 'assistant' %} (last){% endif %}"
    )
    tok = make_tokenizer(chat_template=template)
    good = {"messages": [user("hello"), assistant("hi")]}
    bad = {"messages": [user("hello"), assistant("hi"), user("more"), assistant("ok")]}
    assert only(tokenize_records("chat", [good], tok, 64))
    with pytest.raises(DatasetError, match="not prefix-stable") as info:
        tokenize_records("chat", [good, bad], tok, 64)
    assert info.value.line == 2


def test_template_errors_name_the_record() -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    tok = make_tokenizer(chat_template=template)
    with pytest.raises(DatasetError, match="roles must alternate") as info:
        tokenize_records("chat", [{"messages": [user("a"), assistant("b")]}], tok, 64)
    assert info.value.line == 1


def test_plain_chat_format_without_template(tok: PreTrainedTokenizerFast) -> None:
    assert not tok.chat_template
    messages = [{"role": "system", "content": "be brief"}, user("hello"), assistant("hi"), user("fox?"),
                assistant("quick brown"), user("thanks")]
    example = only(tokenize_records("chat", [{"messages": messages}], tok, 256))
    assert tok.decode(example.input_ids) == (
        "<|system|>\nbe brief\n<|user|>\nhello\n<|assistant|>\nhi<eos>\n<|user|>\nfox?\n<|assistant|>\nquick brown<eos>"
    )
    assert labelled_runs(tok, example) == ["hi<eos>", "quick brown<eos>"]


def test_plain_chat_format_keeps_the_tokenizer_bos() -> None:
    tok = make_tokenizer(bos=True)
    example = only(tokenize_records("chat", [{"messages": [user("hello"), assistant("hi")]}], tok, 64))
    assert example.input_ids[0] == tok.bos_token_id
    assert example.labels[0] == IGNORE_INDEX
    assert labelled_runs(tok, example) == ["hi<eos>"]


# --- truncation ---


def test_truncation_keeps_the_beginning(tok: PreTrainedTokenizerFast) -> None:
    record = {"prompt": "the", "completion": " quick brown fox jumps over the lazy dog"}
    full = only(tokenize_records("prompt_completion", [record], tok, 512))
    data = tokenize_records("prompt_completion", [record], tok, 5)
    assert data.truncated == 1
    assert only(data) == Example(full.input_ids[:5], full.labels[:5])


def test_examples_without_a_target_are_dropped_and_counted(tok: PreTrainedTokenizerFast) -> None:
    long_prompt = {"prompt": "the quick brown fox jumps over the lazy dog", "completion": "dog"}
    short = {"prompt": "the", "completion": " dog"}
    n = len(ids(tok, "the")) + len(ids(tok, " dog")) + 1
    assert len(ids(tok, long_prompt["prompt"])) >= n
    data = tokenize_records("prompt_completion", [long_prompt, short, long_prompt], tok, n)
    assert (data.dropped, data.truncated) == (2, 2)
    assert data.examples == tokenize_records("prompt_completion", [short], tok, n).examples


def test_all_dropped_is_an_error(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DatasetError, match="max_seq_len=3"):
        tokenize_records("prompt_completion", [{"prompt": "the quick brown fox", "completion": "x"}], tok, 3)


def test_max_seq_len_must_leave_room_for_a_target(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        tokenize_records("text", [{"text": "a"}], tok, 1)


def test_load_dataset_reads_validates_and_tokenizes(
    tmp_path: Path, tok: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    with caplog.at_level(logging.WARNING):
        examples = load_dataset(path, tok, 8)
    assert [e.input_ids for e in examples] == [[*ids(tok, t), tok.eos_token_id][:8] for t in CORPUS]
    assert "4 of 4 records truncated" in caplog.text
    path.write_text('{"text": 1}\n')
    with pytest.raises(DatasetError, match="line 1"):
        load_dataset(path, tok, 8)


# --- batching ---


def test_collate_pads_right_and_masks(tok: PreTrainedTokenizerFast) -> None:
    batch = collate([Example([5, 6, 7], [-100, 6, 7]), Example([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())
    with pytest.raises(ValueError):
        collate([], pad_id=0)


def test_pad_token_id_falls_back_to_eos(tok: PreTrainedTokenizerFast) -> None:
    assert pad_token_id(tok) == tok.pad_token_id
    no_pad = make_tokenizer()
    no_pad.pad_token = None
    assert pad_token_id(no_pad) == no_pad.eos_token_id


def test_epoch_order_is_a_deterministic_permutation() -> None:
    order = epoch_order(50, seed=3, epoch=0)
    assert sorted(order) == list(range(50))
    assert order == epoch_order(50, seed=3, epoch=0)
    assert order != epoch_order(50, seed=3, epoch=1)
    assert order != epoch_order(50, seed=4, epoch=0)
    assert order != list(range(50))


def _examples(n: int) -> list[Example]:
    return [Example(list(range(1, 2 + i % 4)), list(range(1, 2 + i % 4))) for i in range(n)]


def test_steps_per_epoch_keeps_the_partial_batch() -> None:
    stream = BatchStream(_examples(10), batch_size=4, seed=0, pad_id=0)
    assert stream.steps_per_epoch == 3
    assert stream.next_position(0, 0) == (0, 4)
    assert stream.next_position(0, 4) == (0, 8)
    assert stream.next_position(0, 8) == (1, 0)
    assert stream.batch_at(0, 8)["input_ids"].shape[0] == 2
    assert BatchStream(_examples(8), batch_size=4, seed=0, pad_id=0).steps_per_epoch == 2
    with pytest.raises(ValueError, match="start"):
        stream.batch_at(0, 10)


def test_each_epoch_visits_every_example_once() -> None:
    examples = [Example([i + 1], [i + 1]) for i in range(10)]
    stream = BatchStream(examples, batch_size=3, seed=7, pad_id=0)
    position, seen = (1, 0), []
    for _ in range(stream.steps_per_epoch):
        seen += stream.batch_at(*position)["input_ids"][:, 0].tolist()
        position = stream.next_position(*position)
    assert position == (2, 0)
    assert sorted(seen) == list(range(1, 11))
    assert seen == [i + 1 for i in epoch_order(10, seed=7, epoch=1)]


def test_resumed_stream_equals_the_uninterrupted_one() -> None:
    examples = _examples(11)
    stream = BatchStream(examples, batch_size=4, seed=1, pad_id=0)
    position, uninterrupted, positions = (0, 0), [], []
    for _ in range(10):  # three and a third epochs
        positions.append(position)
        uninterrupted.append(stream.batch_at(*position))
        position = stream.next_position(*position)

    saved = positions[4]  # as a checkpoint would store it, mid-epoch
    resumed = BatchStream(examples, batch_size=4, seed=1, pad_id=0)  # a fresh process: no cached order
    position = saved
    for expected in uninterrupted[4:]:
        batch = resumed.batch_at(*position)
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(batch[key], expected[key])
        position = resumed.next_position(*position)
