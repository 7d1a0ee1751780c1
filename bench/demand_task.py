"""The demand-vs-traffic task of the quality experiment (docs/benchmarks.md, 'Quality: demand vs traffic').

Built from the bundled demo model without rebuilding it, in formats it was (or was not) pretrained on:
- (A) high traffic, low demand: string operations and digit sorting in the pretraining format (`reverse lamp ->`,
  `sort [3, 1, 2] gives`), which the base model already answers (its first line is right ~100 % / ~88 % of the
  time); fine-tuning only has to learn to stop. Four of every five training rows, and the longer rows.
- (B) low traffic, high demand: sums and differences asked as questions (`What is 46 plus 99?`), a frame
  pretraining never shows; the base model answers 0.5 %, and uniform LoRA gains a lot from rank on it. One row in
  five. Its 1,000 test questions are disjoint from its training questions.
Everything is generated from TASK_SEED, so every run and seed trains and tests on the same files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TASK_SEED = 1212
WORDS = ("lamp", "fig", "cat", "moss", "rope", "kite", "pear", "drum", "sock", "vase", "bolt", "leaf", "mint", "wolf",
         "yarn", "plum", "frog", "harp", "oven", "nest", "gold", "tide", "bark", "coin", "apple", "bench", "cloud",
         "daisy", "eagle", "flute", "grape", "honey", "lemon", "mango", "olive", "piano", "stone", "tiger", "wheat",
         "zebra")  # words of the demo's pretraining `strings` domain
STRING_OPS = {"reverse": lambda w: w[::-1], "upper": str.upper, "double": lambda w: w + w, "first": lambda w: w[0],
              "last": lambda w: w[-1]}


@dataclass(frozen=True)
class TaskFiles:
    train: Path  # prompt/completion rows, what the engine trains on
    parts: Path  # the part ("A" or "B") of each training row, one per line, for the routing measurement
    test_a: Path
    test_b: Path


@dataclass(frozen=True)
class TaskSizes:
    train_a: int = 3200
    train_b: int = 800
    test_a: int = 200
    test_b: int = 1000


def write_task(folder: Path, sizes: TaskSizes = TaskSizes()) -> TaskFiles:
    rng = random.Random(TASK_SEED)
    b_questions = _arithmetic_questions(rng, sizes.train_b + sizes.test_b)
    b_train, b_test = b_questions[:sizes.train_b], b_questions[sizes.train_b:]
    a_test = [_a_item(rng, held_out=True) for _ in range(sizes.test_a)]
    seen_lists = {row["prompt"] for row in a_test if row["prompt"].startswith("sort")}
    a_train: list[dict[str, str]] = []
    while len(a_train) < sizes.train_a:  # sorting prompts in the test set never appear in training
        row = _a_item(rng, held_out=False)
        if row["prompt"] not in seen_lists:
            a_train.append(row)
    train = [{**r, "part": "A"} for r in a_train] + [{**r, "part": "B"} for r in b_train]
    rng.shuffle(train)
    folder.mkdir(parents=True, exist_ok=True)
    files = TaskFiles(folder / "train.jsonl", folder / "parts.txt", folder / "test_a.jsonl", folder / "test_b.jsonl")
    plain = [{"prompt": r["prompt"], "completion": r["completion"]} for r in train]
    for path, rows in ((files.train, plain), (files.test_a, a_test), (files.test_b, b_test)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files.parts.write_text("".join(r["part"] + "\n" for r in train))
    return files


def train_rows_with_parts(files: TaskFiles) -> list[dict[str, Any]]:
    parts = files.parts.read_text().split()
    return [{**row, "part": part} for row, part in zip(read_rows(files.train), parts, strict=True)]


def _arithmetic_questions(rng: random.Random, n: int) -> list[dict[str, str]]:
    questions: set[tuple[int, str, int]] = set()
    while len(questions) < n:
        a, b, op = rng.randint(0, 99), rng.randint(0, 99), rng.choice(("plus", "minus"))
        questions.add((max(a, b), op, min(a, b)) if op == "minus" else (a, op, b))
    ordered = sorted(questions)
    rng.shuffle(ordered)
    return [{"prompt": f"What is {a} {op} {b}?", "completion": f" {a + b if op == 'plus' else a - b}"}
            for a, op, b in ordered]


def _a_item(rng: random.Random, held_out: bool) -> dict[str, str]:
    if rng.random() < 0.5:
        op, word = rng.choice(list(STRING_OPS)), rng.choice(WORDS)
        return {"prompt": f"{op} {word} ->", "completion": f" {STRING_OPS[op](word)}"}
    digits = [rng.randint(0, 9) for _ in range(rng.randint(4, 6) if held_out else rng.randint(3, 6))]
    return {"prompt": f"sort [{', '.join(map(str, digits))}] gives",
            "completion": f" [{', '.join(map(str, sorted(digits)))}]"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@torch.no_grad()
def routing_by_part(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch: int = 64) -> dict[str, Any]:
    """Top-k assignments per layer and expert of the base model over the training rows, split by part (A, B)."""
    model.eval()
    top_k = model.config.num_experts_per_tok
    counts: dict[str, torch.Tensor] = {}
    for part in ("A", "B"):
        texts = [r["prompt"] + r["completion"] for r in rows if r["part"] == part]
        total: torch.Tensor | None = None
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], return_tensors="pt", padding=True)
            out = model(**enc, output_router_logits=True, use_cache=False)
            real = enc["attention_mask"].reshape(-1).bool()
            layer_counts = torch.stack([torch.bincount(logits[real].topk(top_k, -1).indices.reshape(-1),
                                                       minlength=logits.shape[-1]) for logits in out.router_logits])
            total = layer_counts if total is None else total + layer_counts
        assert total is not None
        counts[part] = total
    every = counts["A"] + counts["B"]
    b_share_of_traffic = float(counts["B"].sum() / every.sum())
    # B's experts: per layer the fewest experts that take half of B's assignments; what share of all traffic they get
    b_experts, their_share = [], []
    for layer in range(every.shape[0]):
        order = counts["B"][layer].argsort(descending=True).tolist()
        chosen, covered = [], 0
        for e in order:
            chosen.append(e)
            covered += int(counts["B"][layer, e])
            if covered * 2 >= int(counts["B"][layer].sum()):
                break
        b_experts.append(chosen)
        their_share.append(float(every[layer, chosen].sum() / every[layer].sum()))
    return {"share": {p: (c / c.sum(-1, keepdim=True)).tolist() for p, c in counts.items()},
            "all": (every / every.sum(-1, keepdim=True)).tolist(),
            "b_token_share": b_share_of_traffic, "b_experts": b_experts, "b_experts_traffic_share": their_share}
