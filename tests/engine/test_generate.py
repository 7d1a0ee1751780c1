"""`drlora_core.generate`: a stored adapter folded into its base decodes as the attached adapter does, prompts are
formatted as training formatted them, and sampling is seeded."""

import pytest
import torch

from drlora_core.assets import DEMO_MODEL_ID
from drlora_core.config import LoraConfig
from drlora_core.data import IGNORE_INDEX, tokenize_records
from drlora_core.decode import Sampling, decode_ids
from drlora_core.export import export_peft
from drlora_core.generate import generate, prompt_ids
from drlora_core.run import load_base
from tests.support.engine import hetero_ranks, randomise_b

PROMPTS = ["What is 12 plus 7?", "What is 99 minus 3?", "What is 5 plus 60?", "hello"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The demo model with a random heterogeneous adapter attached, and that adapter written to a directory."""
    from drlora_core.adapter import attach

    model, tokenizer, _ = load_base(DEMO_MODEL_ID, CPU)
    config = LoraConfig(r_init=2, r_target=4, r_max=8, growth_interval=2, dropout=0.0)
    adapter = attach(model, config, ranks=hetero_ranks(model, 8))
    torch.manual_seed(3)
    randomise_b(adapter, std=0.5)
    out = tmp_path_factory.mktemp("gen") / "adapter"
    export_peft(adapter, out, base_model=DEMO_MODEL_ID)
    return model, tokenizer, out


def test_greedy_after_folding_equals_greedy_with_the_adapter_attached(stored):
    model, tokenizer, out = stored
    sampling = Sampling(max_new_tokens=8)
    attached = decode_ids(model, tokenizer, [prompt_ids(tokenizer, p, chat=False) for p in PROMPTS], sampling)
    base, _, _ = load_base(DEMO_MODEL_ID, CPU)
    untouched = decode_ids(base, tokenizer, [prompt_ids(tokenizer, p, chat=False) for p in PROMPTS], sampling)
    folded = generate(out, PROMPTS, sampling, device="cpu", dtype="fp32")
    assert folded.model == DEMO_MODEL_ID and folded.chat is False
    assert folded.completions == attached
    assert folded.completions != untouched  # the adapter changes what the model says


def test_sampling_is_seeded_and_a_tiny_top_p_is_greedy(stored):
    _, _, out = stored
    greedy = generate(out, PROMPTS, Sampling(max_new_tokens=8), device="cpu").completions
    hot = Sampling(max_new_tokens=8, temperature=1.5, seed=1)
    first = generate(out, PROMPTS, hot, device="cpu").completions
    assert generate(out, PROMPTS, hot, device="cpu").completions == first
    others = [generate(out, PROMPTS, Sampling(max_new_tokens=8, temperature=1.5, seed=s), device="cpu").completions
              for s in (2, 3)]
    assert any(o != first for o in others)
    narrow = Sampling(max_new_tokens=8, temperature=1.5, top_p=1e-6, seed=5)
    assert generate(out, PROMPTS, narrow, device="cpu").completions == greedy


@pytest.mark.parametrize("chat_template", [True, False])
def test_chat_prompts_are_the_tokens_training_put_before_the_answer(chat_template):
    _, tokenizer, _ = load_base(DEMO_MODEL_ID, CPU)
    if not chat_template:
        tokenizer.chat_template = None
    record = {"messages": [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": " 7"}]}
    example = tokenize_records("chat", [record], tokenizer, 256).examples[0]
    first_target = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert prompt_ids(tokenizer, "What is 3 plus 4?", chat=True) == example.input_ids[:first_target]


def test_plain_prompts_are_the_tokens_training_put_before_the_completion():
    _, tokenizer, _ = load_base(DEMO_MODEL_ID, CPU)
    example = tokenize_records("prompt_completion", [{"prompt": "What is 3 plus 4?", "completion": " 7"}],
                               tokenizer, 256).examples[0]
    first_target = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert prompt_ids(tokenizer, "What is 3 plus 4?", chat=False) == example.input_ids[:first_target]


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5},
                                 {"seed": -1}, {"temperature": float("nan")}])
def test_bad_sampling_settings_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Sampling(**bad)


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "module_list", "mixtral"])
def test_folding_a_stored_adapter_gives_the_merged_reference_in_every_layout(family, tmp_path):
    from drlora_core.adapter_files import read_adapter
    from drlora_core.export import merge_stored_into_base
    from drlora_core.tiny import build_tiny
    from tests.support.engine import adapted, reference_logits

    model, adapter = adapted(family)
    with torch.no_grad():  # a trained router travels with the adapter and is copied in
        adapter.sites[0].router.weight.add_(0.5)
    export_peft(adapter, tmp_path / "adapter", base_model=family, routers=True)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    fresh = build_tiny(family)
    if hasattr(fresh, "set_experts_implementation"):
        fresh.set_experts_implementation("eager")
    merge_stored_into_base(fresh, read_adapter(tmp_path / "adapter"))
    with torch.no_grad():
        folded = fresh(input_ids=ids).logits
    assert torch.allclose(folded, reference_logits(model, adapter, ids), atol=1e-5, rtol=0)
    assert not torch.allclose(folded, build_tiny(family)(input_ids=ids).logits, atol=1e-3)


def test_an_adapter_for_another_model_is_refused_naming_its_base(stored, tmp_path):
    from drlora_core.adapter_files import read_adapter
    from drlora_core.export import merge_stored_into_base
    from drlora_core.tiny import build_tiny

    with pytest.raises(ValueError, match="load the base model the adapter was trained on"):
        merge_stored_into_base(build_tiny("module_list"), read_adapter(stored[2]))
