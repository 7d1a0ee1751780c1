"""The streamed merge: the base checkpoint's own shards with the adapter folded in, loadable by transformers alone,
equal to base + adapter, and written without ever holding the model in memory."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from drlora_core.adapter_files import read_adapter
from drlora_core.export import export_peft
from drlora_core.export_options import ExportOptions
from drlora_core.exporting import export_stored
from drlora_core.merge_plan import MergeError
from drlora_core.merge_stream import export_merged, merge_streamed
from drlora_core.tiny import COMMON, build_tiny
from tests.support.engine import adapted, logits

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(5))
SHARD = "60KB"  # the tiny models are ~0.4 MB in fp32: several shards each


def checkpoint_and_adapter(family: str, root: Path, routers: bool = False) -> tuple[Path, Path, torch.Tensor,
                                                                                     torch.Tensor]:
    """(base dir, adapter dir, logits of base + adapter, logits of the base alone) for a tiny `family` model."""
    model, adapter = adapted(family)
    if routers:
        with torch.no_grad():
            for site in adapter.sites:
                site.router.weight.add_(torch.randn_like(site.router.weight))
    want = logits(model, IDS)
    export_peft(adapter, root / "adapter", base_model=str(root / "base"), routers=routers)
    adapter.detach()
    if routers:  # the base on disk keeps its untrained routers
        model = build_tiny(family)
    model.save_pretrained(root / "base", max_shard_size=SHARD)
    return root / "base", root / "adapter", want, logits(model, IDS)


def load(directory: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True).eval()


def tensors_of(directory: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            found.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return found


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_merged_checkpoint_loads_and_equals_base_plus_adapter(family, tmp_path):
    base, adapter_dir, want, base_logits = checkpoint_and_adapter(family, tmp_path)
    fractions: list[float] = []
    out = merge_streamed(read_adapter(adapter_dir), base, tmp_path / "merged", "auto",
                         progress=lambda what, f: fractions.append(f))
    shards = sorted(p.name for p in base.glob("*.safetensors"))
    assert len(shards) >= 3
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    index, merged_index = (json.loads((d / "model.safetensors.index.json").read_text()) for d in (base, out))
    assert merged_index["weight_map"] == index["weight_map"]
    assert merged_index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                         for t in tensors_of(out).values())
    assert fractions == [(i + 1) / len(shards) for i in range(len(shards))]
    assert (out / "generation_config.json").is_file() and not list(tmp_path.glob(".merged*"))
    got = logits(load(out), IDS)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert not torch.allclose(got, base_logits, atol=1e-2)  # the adapter changed the model


def test_bf16_merge_is_the_fp32_merge_rounded(tmp_path):
    base, adapter_dir, want, _ = checkpoint_and_adapter("qwen3_moe", tmp_path)
    fp32 = export_merged(adapter_dir, base, tmp_path / "fp32", "fp32")
    bf16 = export_stored(adapter_dir, tmp_path / "bf16", ExportOptions(layout="merged", dtype="bf16"),
                         base_model_dir=base)  # the export entry point the CLI and the worker call
    exact, rounded = tensors_of(fp32), tensors_of(bf16)
    assert rounded.keys() == exact.keys()
    for key, tensor in rounded.items():
        assert tensor.dtype == torch.bfloat16, key
        assert torch.equal(tensor, exact[key].to(torch.bfloat16)), key
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    got = logits(load(bf16, torch.float32), IDS)  # bf16 weights, fp32 arithmetic: only the rounding differs
    assert torch.allclose(got, want, atol=5e-2, rtol=0)


def test_trained_routers_replace_the_base_routers(tmp_path):
    base, adapter_dir, want, _ = checkpoint_and_adapter("mixtral", tmp_path, routers=True)
    out = export_merged(adapter_dir, base, tmp_path / "merged")
    router = tensors_of(out)["model.layers.0.block_sparse_moe.gate.weight"]
    assert not torch.equal(router, tensors_of(base)["model.layers.0.block_sparse_moe.gate.weight"])
    assert torch.allclose(logits(load(out), IDS), want, atol=1e-4, rtol=0)


def qwen3(root: Path, **sizes: object) -> Path:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    settings = {**COMMON, "intermediate_size": 32, "moe_intermediate_size": 16, "num_experts": 8,
                "num_experts_per_tok": 2, "head_dim": 8, "decoder_sparse_step": 1, "mlp_only_layers": [], **sizes}
    Qwen3MoeForCausalLM(Qwen3MoeConfig(**settings)).save_pretrained(root)
    return root


def test_another_models_checkpoint_is_refused_before_anything_is_written(tmp_path):
    from safetensors.torch import load_file, save_file

    _, adapter_dir, _, _ = checkpoint_and_adapter("qwen3_moe", tmp_path / "qwen")
    with pytest.raises(MergeError, match=r"wrong base model for this adapter: 24 tensors differ in shape .*"
                                         r"model.layers.0.mlp.experts.0.down_proj.weight \(32, 16\) vs \(32, 24\)"):
        export_merged(adapter_dir, qwen3(tmp_path / "wider", moe_intermediate_size=24), tmp_path / "merged")
    with pytest.raises(MergeError, match=r"wrong base model: the adapter adapts model.layers.1.mlp.experts"):
        export_merged(adapter_dir, qwen3(tmp_path / "shallow", num_hidden_layers=1), tmp_path / "merged")
    pruned = qwen3(tmp_path / "pruned")
    kept = {k: v for k, v in load_file(pruned / "model.safetensors").items() if "layers.1.mlp.experts" not in k}
    save_file(kept, pruned / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MergeError, match=r"wrong base model for this adapter: 24 tensors it updates are missing "
                                         r"from the checkpoint, first: model.layers.1.mlp.experts.0.down_proj.weight"):
        export_merged(adapter_dir, pruned, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged*"))


def test_a_quantized_base_is_refused(tmp_path):
    base, adapter_dir, _, _ = checkpoint_and_adapter("qwen3_moe", tmp_path)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "mxfp4"}}))
    with pytest.raises(MergeError, match="mxfp4 quantized: a LoRA cannot be merged into quantized weights"):
        export_merged(adapter_dir, base, tmp_path / "merged")


BUILD = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    from drlora_core.adapter import attach
    from drlora_core.export import export_peft
    from tests.support.engine import SMALL, randomise_b
    root = Path(sys.argv[1])
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=256, hidden_size=512, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=512, moe_intermediate_size=256,
        num_experts=32, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False))
    adapter = attach(model, SMALL)
    randomise_b(adapter)
    export_peft(adapter, root / "adapter", base_model="synthetic")
    adapter.detach()
    model.save_pretrained(root / "base", max_shard_size="40MB")
""")
MERGE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from drlora_core.adapter_files import read_adapter
    from drlora_core.merge_plan import open_base, skeleton
    from drlora_core.merge_stream import merge_streamed

    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

    root = Path(sys.argv[1])
    stored = read_adapter(root / "adapter")
    skeleton(open_base(root / "base"))  # import the model's code first: ~120 MB the same for any model size
    before = kib("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    merge_streamed(stored, root / "base", root / "merged", "auto")
    print(json.dumps({"before_kib": before, "peak_kib": kib("VmHWM")}))
""")


def test_merging_holds_about_one_shard_not_the_model(tmp_path):  # ~35 s: builds and merges a 400 MB model
    run = [sys.executable, "-c"]
    subprocess.run([*run, BUILD, str(tmp_path)], check=True, capture_output=True, cwd=Path(__file__).parents[2])
    shards = list((tmp_path / "base").glob("*.safetensors"))
    model_bytes = sum(p.stat().st_size for p in shards)
    result = subprocess.run([*run, MERGE, str(tmp_path)], check=True, capture_output=True, text=True,
                            cwd=Path(__file__).parents[2])
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    growth = (figures["peak_kib"] - figures["before_kib"]) * 1024
    largest = max(p.stat().st_size for p in shards)
    print(f"model {model_bytes / 2**20:.0f} MiB in {len(shards)} shards (largest {largest / 2**20:.0f} MiB); "
          f"peak RSS growth while merging {growth / 2**20:.0f} MiB")
    assert len(shards) >= 8 and model_bytes > 300 * 2**20
    assert growth < 0.5 * model_bytes


def test_a_base_of_another_family_with_the_same_shapes_is_refused(tmp_path):
    _, adapter_dir, _, _ = checkpoint_and_adapter("qwen3_moe", tmp_path / "qwen")
    mixtral_base, _, _, _ = checkpoint_and_adapter("mixtral", tmp_path / "mixtral")
    with pytest.raises(MergeError, match=r"trained on a qwen3_moe model and .* holds a mixtral one"):
        export_merged(adapter_dir, mixtral_base, tmp_path / "merged")
