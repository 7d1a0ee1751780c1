"""Build the bundled demo base model `drlora-demo-moe` and its demo dataset, from nothing, on CPU.

DR-LoRA grows the LoRA ranks of the experts a fine-tuning task routes to most, so the demo needs an MoE whose experts
really specialise. Nothing can be downloaded, so we make one:

1. a synthetic pretraining corpus of six domains with distinct vocabularies and formats;
2. a byte-level BPE tokenizer (vocab 1024) trained on it, with pad/EOS/chat-role tokens and a chat template;
3. a small Qwen3-MoE (16 experts, top-2, every layer MoE) pretrained on the corpus with AdamW and the
   load-balancing loss, so every expert is used but experts still split the domains between them;
4. the target task for fine-tuning (sums and differences asked as questions), as prompt/completion JSONL;
5. a routing profile: per layer, the share of top-k assignments each expert receives per domain and for the task.

Everything is seeded and runs single-threaded, so a rerun on the same software reproduces the assets.

    .venv/bin/python scripts/build_demo_model.py    # about ten minutes on one idle CPU core
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# The Rust tokenizer would otherwise spread over every core; the other core on the build machine is not ours.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "drlora_core" / "assets" / "drlora-demo-moe"
DATA_DIR = ROOT / "drlora_core" / "assets" / "demo_data"

SEED = 20240611
# Model: every dimension a multiple of 8; about 2M parameters, 8 MB in float32.
VOCAB_SIZE = 1024
HIDDEN = 128
LAYERS = 4
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 32
EXPERTS, TOP_K, EXPERT_INTER = 16, 2, 64
MAX_POSITIONS = 512
# Load-balancing weight, applied to each layer separately (see `pretrain`). It keeps every expert of every layer in
# use; at 0.01 it also spread each domain over more experts, while at 0.001 domains keep experts of their own.
AUX_LOSS_COEF = 0.001
# Pretraining, sized for roughly nine minutes on one core.
SEQ_LEN = 128
BATCH = 32
STEPS = 1400
LR, MIN_LR, WARMUP = 2e-3, 2e-4, 60
LOG_EVERY = 50
# Target-task dataset sizes.
N_TRAIN, N_VAL = 2000, 200

PAD, EOS = "<|pad|>", "<|endoftext|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [PAD, EOS] + [f"<|{r}|>" for r in ROLES]
# One turn per role marker; the assistant's turn closes with EOS so generation stops there. Rendering a prefix of
# the conversation yields a prefix of the full rendering, which the trainer relies on to find assistant tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('role must be system, user or assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer pattern: digits are split one by one, which is what lets a small model learn arithmetic.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# -----------------------------------------------------------------------------------------------------------------
# 1. Pretraining domains. Each generator returns one unit (a line, or a whole function for code); a document is
#    units of a single domain, so the router sees one domain at a time.

WORDS = (
    "lamp", "fig", "cat", "moss", "rope", "kite", "pear", "drum", "sock", "vase", "bolt", "leaf",
    "mint", "wolf", "yarn", "plum", "frog", "harp", "oven", "nest", "gold", "tide", "bark", "coin",
    "dusk", "fern", "gull", "husk", "iris", "jade", "knot", "lime", "mule", "newt", "opal", "pine",
    "quay", "reed", "silk", "tusk", "urn", "vine", "wasp", "yolk", "zinc", "apple", "bench", "cloud",
    "daisy", "eagle", "flute", "grape", "honey", "ivory", "jelly", "koala", "lemon", "mango", "noble",
    "olive", "piano", "quilt", "raven", "stone", "tiger", "umber", "vapor", "wheat", "xenon", "yacht",
    "zebra",
)

SYLLABLES = ("zor", "vath", "quel", "lin", "mar", "keth", "bri", "xan", "dor", "yss", "pel", "tru", "vix", "oma",
             "gan", "sul", "fen", "raq", "ith", "bo")
ATTRIBUTES = {
    "home": ("Pellucia", "Omberlin", "Vask", "Trellmoor", "Quindar", "Saffrane", "Dunmere", "Kelvoth"),
    "color": ("amber", "teal", "crimson", "violet", "ochre", "silver", "indigo", "jade"),
    "pet": ("glimfox", "snarwhal", "pebblecrab", "moonhare", "quillbat", "dewtoad"),
    "craft": ("glassblower", "cartographer", "beekeeper", "lutemaker", "astronomer", "tanner"),
}

NOUNS = ("baker", "sailor", "farmer", "child", "teacher", "traveler", "painter", "fisherman", "miller", "weaver",
         "doctor", "shepherd")
ADJECTIVES = ("quiet", "tired", "cheerful", "old", "young", "curious", "careful", "brave", "gentle", "busy")
VERBS = ("walked", "hurried", "wandered", "drove", "rode", "returned", "climbed", "sailed")
PLACES = ("the market", "the harbor", "the old mill", "the village square", "the river", "the library",
          "the hill", "the bakery", "the station")
TIMES = ("before dawn", "after lunch", "in the evening", "on Sunday", "during the storm", "at noon", "in spring")
OBJECTS = ("a basket of bread", "a heavy letter", "some warm soup", "a bundle of wool", "an old map", "fresh milk",
           "a small lantern", "a box of nails")
CODE_NAMES = ("x", "y", "n", "total", "count", "value", "acc", "step")


def make_entities(rng: random.Random, n: int = 48) -> dict[str, dict[str, str]]:
    """A fixed invented world: the fact domain states the same facts again and again, so they can be learnt."""
    entities: dict[str, dict[str, str]] = {}
    while len(entities) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        entities.setdefault(name, {k: rng.choice(v) for k, v in ATTRIBUTES.items()})
    return entities


# Sums and differences in several wordings, so that the skill is tied to the numbers and the operation rather than
# to one layout: that is what lets fine-tuning carry it over to a new phrasing in a few hundred steps.
ARITHMETIC_TEMPLATES = {
    "+": ("{a} + {b} = {c}", "{a} plus {b} is {c}", "the sum of {a} and {b} is {c}", "{a} and {b} make {c}"),
    "-": ("{a} - {b} = {c}", "{a} minus {b} is {c}", "the difference of {a} and {b} is {c}",
          "{b} from {a} leaves {c}"),
}


def arithmetic(rng: random.Random) -> str:
    op = rng.choices("+-*", weights=(5, 4, 1))[0]
    if op == "*":
        a, b = rng.randint(0, 12), rng.randint(0, 12)
        return f"{a} * {b} = {a * b}"
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if op == "-":
        a, b = max(a, b), min(a, b)
    template = rng.choices(ARITHMETIC_TEMPLATES[op], weights=(4, 2, 1, 1))[0]
    return template.format(a=a, b=b, c=a + b if op == "+" else a - b)


def strings(rng: random.Random) -> str:
    w, v = rng.choice(WORDS), rng.choice(WORDS)
    op = rng.choice(("reverse", "upper", "double", "first", "last", "swap"))
    out = {"reverse": w[::-1], "upper": w.upper(), "double": w + w, "first": w[0], "last": w[-1],
           "swap": f"{v} {w}"}[op]
    arg = f"{w} {v}" if op == "swap" else w
    return f"{op} {arg} -> {out}"


def facts(rng: random.Random, entities: dict[str, dict[str, str]]) -> str:
    name = rng.choice(list(entities))
    keys = rng.sample(list(ATTRIBUTES), rng.randint(2, len(ATTRIBUTES)))
    return name + "".join(f" | {k}: {entities[name][k]}" for k in keys)


def sorting(rng: random.Random) -> str:
    xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 8))]
    if rng.random() < 0.7:
        return f"sort [{', '.join(map(str, xs))}] gives [{', '.join(map(str, sorted(xs)))}]"
    return f"rsort [{', '.join(map(str, xs))}] gives [{', '.join(map(str, sorted(xs, reverse=True)))}]"


def code(rng: random.Random) -> str:
    name = f"{rng.choice(('scale', 'shift', 'clip', 'walk', 'fold'))}_{rng.randint(0, 9)}"
    arg, var = rng.sample(CODE_NAMES, 2)
    k, m = rng.randint(1, 9), rng.randint(1, 9)
    body = rng.choice((
        [f"    {var} = {arg} * {k}", f"    return {var} + {m}"],
        [f"    if {arg} > {k}:", f"        return {arg} - {m}", f"    return {arg}"],
        [f"    {var} = 0", f"    for i in range({k}):", f"        {var} += {arg}", f"    return {var}"],
        [f"    {var} = [{arg}] * {k}", f"    print({var})", f"    return len({var})"],
    ))
    return "\n".join([f"def {name}({arg}):", *body]) + "\n"


def prose(rng: random.Random) -> str:
    who = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    return rng.choice((
        f"{who} {rng.choice(VERBS)} to {rng.choice(PLACES)} {rng.choice(TIMES)}.",
        f"{who} carried {rng.choice(OBJECTS)} to {rng.choice(PLACES)}.",
        f"{rng.choice(TIMES).capitalize()}, {who.lower()} {rng.choice(VERBS)} home with {rng.choice(OBJECTS)}.",
    ))


def make_domains(entities: dict[str, dict[str, str]]) -> dict[str, Callable[[random.Random], str]]:
    return {
        "arithmetic": arithmetic,
        "strings": strings,
        "facts": lambda rng: facts(rng, entities),
        "sorting": sorting,
        "code": code,
        "prose": prose,
    }


# Arithmetic gets a larger share: the target task builds on it, and carries take practice.
DOMAIN_WEIGHTS = {"arithmetic": 0.3, "strings": 0.14, "facts": 0.14, "sorting": 0.14, "code": 0.14, "prose": 0.14}

# -----------------------------------------------------------------------------------------------------------------
# 2. The target task: sums and differences asked as questions, a frame pretraining never shows. Its tokens are mostly
#    the arithmetic domain's, so fine-tuning has a reason to grow some experts' ranks more than others.


def target_example(a: int, op: str, b: int) -> dict[str, str]:
    answer = a + b if op == "plus" else a - b
    return {"prompt": f"What is {a} {op} {b}?", "completion": f" {answer}"}


def make_target_task(rng: random.Random) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and validation questions, disjoint: validation measures the skill, not recall of seen questions."""
    questions: set[tuple[int, str, int]] = set()
    while len(questions) < N_TRAIN + N_VAL:
        a, b, op = rng.randint(0, 99), rng.randint(0, 99), rng.choice(("plus", "minus"))
        questions.add((max(a, b), op, min(a, b)) if op == "minus" else (a, op, b))
    ordered = sorted(questions)
    rng.shuffle(ordered)
    examples = [target_example(*q) for q in ordered]
    return examples[:N_TRAIN], examples[N_TRAIN:]


# -----------------------------------------------------------------------------------------------------------------
# 3. Tokenizer.


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
                                 additional_special_tokens=SPECIAL_TOKENS[2:], model_max_length=MAX_POSITIONS)
    hf.chat_template = CHAT_TEMPLATE
    return hf


# -----------------------------------------------------------------------------------------------------------------
# 4. Documents: units of one domain packed up to SEQ_LEN tokens, closed by EOS, right-padded.


def make_documents(domain: str, gen: Callable[[random.Random], str], n_docs: int, rng: random.Random,
                   tok: Tokenizer) -> list[list[int]]:
    eos = tok.token_to_id(EOS)
    docs: list[list[int]] = []
    current: list[int] = []
    while len(docs) < n_docs:
        # Units in batches: one call into the Rust tokenizer per thousand units, not per unit.
        units = [gen(rng) + ("" if domain == "code" else "\n") for _ in range(1000)]
        for enc in tok.encode_batch(units):
            ids = enc.ids
            if len(current) + len(ids) > SEQ_LEN - 1:
                if current:
                    docs.append([*current, eos])
                current = ids[: SEQ_LEN - 1]
            else:
                current += ids
            if len(docs) == n_docs:
                break
    return docs


def batch_tensors(docs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(d) for d in docs)
    ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = torch.tensor(d)
        mask[i, : len(d)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# -----------------------------------------------------------------------------------------------------------------
# 5. Model.


def make_config(pad_id: int, eos_id: int) -> Qwen3MoeConfig:
    return Qwen3MoeConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        # Unused (every layer is MoE) but kept small and a multiple of 8 like everything else.
        intermediate_size=2 * HIDDEN,
        num_experts=EXPERTS, num_experts_per_tok=TOP_K, moe_intermediate_size=EXPERT_INTER,
        decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        router_aux_loss_coef=AUX_LOSS_COEF, output_router_logits=False,
        pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
    )


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def pretrain(model: Qwen3MoeForCausalLM, docs: list[list[int]], pad_id: int) -> float:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95))
    # The built-in aux loss balances the load summed over all layers, which lets an expert die in one layer while
    # another layer makes up for it. We switch it off on this instance (the saved config keeps the coefficient for
    # fine-tuning) and balance every layer on its own instead.
    model.router_aux_loss_coef = 0.0
    model.train()
    start, smoothed = time.time(), float("nan")
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batch = batch_tensors(docs[step * BATCH : (step + 1) * BATCH], pad_id)
        out = model(**batch, output_router_logits=True)
        balance = per_layer_balance_loss(out.router_logits, batch["attention_mask"])
        (out.loss + AUX_LOSS_COEF * balance).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        smoothed = out.loss.item() if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * out.loss.item()
        if step % LOG_EVERY == 0 or step == STEPS - 1:
            print(f"step {step:5d}/{STEPS}  lm loss {out.loss.item():.3f} (avg {smoothed:.3f})  "
                  f"balance {balance.item():.3f}  lr {lr_at(step):.1e}  {time.time() - start:4.0f}s", flush=True)
    model.eval()
    return smoothed


def per_layer_balance_loss(router_logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
    """The Switch-Transformer load-balancing loss of each layer, averaged; 2.0 (= top-k) when perfectly balanced."""
    losses = [load_balancing_loss_func((logits,), EXPERTS, TOP_K, attention_mask) for logits in router_logits]
    return torch.stack(losses).mean()


# -----------------------------------------------------------------------------------------------------------------
# 6. Measurements with the trained model.


@torch.no_grad()
def routing_counts(model: Qwen3MoeForCausalLM, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """(layers, experts) counts of top-k assignments over the non-padding tokens of `seqs`."""
    counts = torch.zeros(LAYERS, EXPERTS, dtype=torch.long)
    for i in range(0, len(seqs), BATCH):
        batch = batch_tensors(seqs[i : i + BATCH], pad_id)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_router_logits=True)
        real = batch["attention_mask"].reshape(-1).bool()
        for layer, logits in enumerate(out.router_logits):
            # Softmax is monotonic, so the top-k of the logits is the router's top-k.
            chosen = logits[real].topk(TOP_K, dim=-1).indices.reshape(-1)
            counts[layer] += torch.bincount(chosen, minlength=EXPERTS)
    return counts


@torch.no_grad()
def mean_loss(model: Qwen3MoeForCausalLM, seqs: list[list[int]], pad_id: int) -> float:
    losses = [model(**batch_tensors(seqs[i : i + BATCH], pad_id)).loss.item() for i in range(0, len(seqs), BATCH)]
    return sum(losses) / len(losses)


@torch.no_grad()
def exact_match(model: Qwen3MoeForCausalLM, tok: Tokenizer, pairs: list[tuple[str, str]], pad_id: int) -> float:
    """Share of (prompt, answer) pairs whose answer tokens are all the greedy choice; under teacher forcing that
    is the same as greedy decoding producing the answer."""
    hits = 0
    for i in range(0, len(pairs), BATCH):
        chunk = pairs[i : i + BATCH]
        prompts = [tok.encode(p).ids for p, _ in chunk]
        answers = [tok.encode(a).ids for _, a in chunk]
        batch = batch_tensors([p + a for p, a in zip(prompts, answers, strict=True)], pad_id)
        predicted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
        for row, (p, a) in enumerate(zip(prompts, answers, strict=True)):
            hits += predicted[row, len(p) - 1 : len(p) + len(a) - 1].tolist() == a
    return hits / len(pairs)


def print_routing_table(share: dict[str, list[list[float]]]) -> None:
    width = max(len(name) for name in share)
    for layer in range(LAYERS):
        print(f"\nlayer {layer}: % of top-{TOP_K} assignments per expert")
        print(" " * width + "  " + " ".join(f"{e:>3d}" for e in range(EXPERTS)) + "   top4  eff.experts")
        for name, per_layer in share.items():
            row = per_layer[layer]
            top4 = sum(sorted(row, reverse=True)[:4])
            print(f"{name:<{width}}  " + " ".join(f"{100 * s:3.0f}" for s in row)
                  + f"   {100 * top4:3.0f}%  {effective_experts(row):5.1f}")


def effective_experts(row: list[float]) -> float:
    """exp(entropy) of a routing distribution: 16 when uniform over 16 experts, 2 when on two only."""
    return math.exp(-sum(p * math.log(p) for p in row if p > 0))


# -----------------------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def save_model(model: Qwen3MoeForCausalLM, hf_tok: PreTrainedTokenizerFast) -> None:
    # Save to a scratch dir first so a failed run never leaves a half-written model in the assets.
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch, safe_serialization=True)
        hf_tok.save_pretrained(scratch)
        config_path = Path(scratch) / "config.json"
        config = json.loads(config_path.read_text())
        config.pop("_name_or_path", None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        keep = {"routing_profile.json"}
        if MODEL_DIR.exists():
            for stale in MODEL_DIR.iterdir():
                if stale.name not in keep:
                    stale.unlink()
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        for f in Path(scratch).iterdir():
            shutil.copyfile(f, MODEL_DIR / f.name)


def main() -> None:
    t0 = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)

    entities = make_entities(rng)
    domains = make_domains(entities)

    # Tokenizer from a sample of every domain (the target task's phrasing is deliberately not in it).
    tok_rng = random.Random(SEED + 1)
    sample = [gen(tok_rng) + "\n" for gen in domains.values() for _ in range(6000)]
    tok = train_tokenizer(sample)
    hf_tok = wrap_tokenizer(tok)
    pad_id, eos_id = tok.token_to_id(PAD), tok.token_to_id(EOS)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    print(f"tokenizer: {tok.get_vocab_size()} tokens ({time.time() - t0:.0f}s)")

    # Training documents: a seeded domain for every slot, then each domain's documents in a seeded stream.
    doc_rng = random.Random(SEED + 2)
    slots = doc_rng.choices(list(DOMAIN_WEIGHTS), weights=list(DOMAIN_WEIGHTS.values()), k=STEPS * BATCH)
    by_domain = {d: iter(make_documents(d, domains[d], slots.count(d), random.Random(f"{SEED}:{d}"), tok))
                 for d in domains}
    train_docs = [next(by_domain[d]) for d in slots]
    # Held-out documents for the loss and routing measurements.
    held_out = {d: make_documents(d, domains[d], 64, random.Random(f"{SEED}:{d}:held-out"), tok) for d in domains}
    print(f"corpus: {len(train_docs)} documents of up to {SEQ_LEN} tokens, "
          f"{sum(map(len, train_docs)) / 1e6:.2f}M tokens ({time.time() - t0:.0f}s)")

    train_rows, val_rows = make_target_task(random.Random(SEED + 3))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    write_jsonl(DATA_DIR / "train.jsonl", train_rows)
    write_jsonl(DATA_DIR / "val.jsonl", val_rows)

    model = Qwen3MoeForCausalLM(make_config(pad_id, eos_id))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen3-MoE, {n_params / 1e6:.2f}M parameters, {LAYERS} layers x {EXPERTS} experts, top-{TOP_K}")

    t_train = time.time()
    final_loss = pretrain(model, train_docs, pad_id)
    train_seconds = time.time() - t_train
    print(f"pretraining: {STEPS} steps in {train_seconds:.0f}s, final lm loss (smoothed) {final_loss:.3f}")

    # What the model can do, and how it routes.
    held_out_loss = {d: round(mean_loss(model, docs, pad_id), 4) for d, docs in held_out.items()}
    eval_rng = random.Random(SEED + 4)
    sums = [(eval_rng.randint(0, 99), eval_rng.randint(0, 99)) for _ in range(200)]
    arithmetic_acc = exact_match(model, tok, [(f"{a} + {b} =", f" {a + b}\n") for a, b in sums], pad_id)
    worded_acc = exact_match(model, tok, [(f"{a} plus {b} is", f" {a + b}\n") for a, b in sums], pad_id)
    target_pairs = [(r["prompt"], r["completion"]) for r in val_rows]
    target_acc = exact_match(model, tok, target_pairs, pad_id)
    print(f"held-out lm loss per domain: {held_out_loss}")
    print(f"exact match: pretraining-format addition {arithmetic_acc:.2f} (worded {worded_acc:.2f}), "
          f"target task before fine-tuning {target_acc:.2f}")

    target_seqs = [[*tok.encode(r["prompt"] + r["completion"]).ids, eos_id] for r in val_rows]
    counts = {d: routing_counts(model, docs, pad_id) for d, docs in held_out.items()}
    counts["target_task"] = routing_counts(model, target_seqs, pad_id)
    share = {name: (c / c.sum(dim=1, keepdim=True)).tolist() for name, c in counts.items()}
    share = {name: [[round(s, 4) for s in row] for row in rows] for name, rows in share.items()}
    print_routing_table(share)

    save_model(model, hf_tok)
    profile = {
        "description": "Per layer, the share of top-k router assignments each expert receives, over the "
                       "non-padding tokens of 64 held-out documents per pretraining domain and of the target "
                       "task's validation examples (prompt + completion + EOS). Rows sum to 1.",
        "num_layers": LAYERS, "num_experts": EXPERTS, "top_k": TOP_K,
        "tokens": {name: int(c[0].sum()) // TOP_K for name, c in counts.items()},
        "share": share,
        "effective_experts": {name: [round(effective_experts(row), 2) for row in rows]
                              for name, rows in share.items()},
        "pretraining": {"steps": STEPS, "batch": BATCH, "seq_len": SEQ_LEN, "final_lm_loss": round(final_loss, 4),
                        "held_out_lm_loss": held_out_loss, "parameters": n_params},
        "exact_match": {"addition_pretraining_format": arithmetic_acc, "addition_worded": worded_acc,
                        "target_task_val_before_finetuning": target_acc},
    }
    (MODEL_DIR / "routing_profile.json").write_text(json.dumps(profile, indent=1) + "\n")
    size_mb = (MODEL_DIR / "model.safetensors").stat().st_size / 2**20
    print(f"\nsaved {MODEL_DIR} (model.safetensors {size_mb:.1f} MiB) and {DATA_DIR}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
