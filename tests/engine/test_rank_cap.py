"""A rank cap compresses experts above it by truncated SVD and reports each projection's true relative error."""

import json

import pytest
import torch

from drlora_core.adapter_files import read_adapter
from drlora_core.export import export_peft
from drlora_core.export_options import ExportOptions
from drlora_core.exporting import export_stored
from drlora_core.rank_cap import truncate
from drlora_core.tiny import build_tiny
from tests.support.engine import adapted, logits

# PEFT's own per-expert conversion adds a rank_pattern for the fused gate_up_proj and then warns that the pattern
# matched no module name (it targets a parameter); the loaded ranks and logits are right (tests below).
pytestmark = pytest.mark.filterwarnings("ignore:The following .*_pattern keys did not match:RuntimeWarning")

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(11))


def test_truncation_is_the_best_rank_k_approximation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 40, generator=g), torch.randn(24, 6, generator=g)
    new_a, new_b, error = truncate(a, b, 3)
    dense = (b @ a).double()
    s = torch.linalg.svdvals(dense)
    assert new_a.shape == (3, 40) and new_b.shape == (24, 3)
    assert error == pytest.approx(float(s[3:].square().sum().sqrt() / s.square().sum().sqrt()), rel=1e-6)
    assert float(torch.linalg.matrix_norm(dense - (new_b @ new_a).double())) == pytest.approx(
        float(s[3:].square().sum().sqrt()), rel=1e-4)


def test_a_zero_update_caps_with_no_error():
    _, _, error = truncate(torch.randn(5, 8), torch.zeros(8, 5), 2)
    assert error == 0.0


@pytest.mark.parametrize("family", ["qwen3_moe", "module_list"])
def test_a_cap_at_or_above_every_rank_is_lossless(family, tmp_path):
    _, adapter = adapted(family)
    export_peft(adapter, tmp_path / "src", base_model=family)
    top = max(max(r) for r in adapter.ranks())
    export_stored(tmp_path / "src", tmp_path / "cap", ExportOptions(max_rank=top))
    before, after = read_adapter(tmp_path / "src"), read_adapter(tmp_path / "cap")
    for old, new in zip(before.sites, after.sites, strict=True):
        assert new.ranks == old.ranks
        for name in old.projections:
            assert torch.equal(new.delta(name), old.delta(name))
    report = json.loads((tmp_path / "cap" / "drlora_ranks.json").read_text())["rank_cap"]
    assert report["experts"] == [] and report["max_error"] == 0.0 and report["max_rank"] == top


@pytest.mark.parametrize(("family", "layout"), [("qwen3_moe", "fused"), ("mixtral", "per_expert"),
                                                ("olmoe", "fused"), ("module_list", "fused")])
def test_errors_below_the_cap_match_the_dense_deltas(family, layout, tmp_path):
    _, adapter = adapted(family)
    export_peft(adapter, tmp_path / "src", base_model=family)
    export_stored(tmp_path / "src", tmp_path / "fused3", ExportOptions(max_rank=3))
    out = export_stored(tmp_path / "src", tmp_path / "cap", ExportOptions(layout=layout, max_rank=3))  # type: ignore[arg-type]
    document = json.loads((out / "drlora_ranks.json").read_text())
    assert document["trained_ranks"] == adapter.ranks()
    assert document["ranks"] == [[min(r, 3) for r in layer] for layer in adapter.ranks()]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 3
    before, after = read_adapter(tmp_path / "src"), read_adapter(tmp_path / "fused3")
    report = document["rank_cap"]
    listed = {(c["layer"], c["expert"]) for c in report["experts"]}
    assert listed == {(s.layer, e) for s in before.sites for e, r in enumerate(s.ranks) if r > 3}
    for capped in report["experts"]:
        old, new = before.sites[capped["layer"]], after.sites[capped["layer"]]
        assert capped["original_rank"] == old.ranks[capped["expert"]]
        for name, reported in capped["errors"].items():
            dense = old.delta(name)[capped["expert"]].double()
            approx = new.delta(name)[capped["expert"]].double()
            recomputed = float(torch.linalg.matrix_norm(dense - approx) / torch.linalg.matrix_norm(dense))
            assert reported == pytest.approx(recomputed, abs=1e-5)
            assert reported > 0
    assert report["max_error"] == max(max(c["errors"].values()) for c in report["experts"])
    theirs = logits(_peft(family, out), IDS)  # the capped adapter still loads
    assert torch.isfinite(theirs).all()


def _peft(family, directory):
    from peft import PeftModel

    return PeftModel.from_pretrained(build_tiny(family), directory)
