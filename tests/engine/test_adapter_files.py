"""A stored adapter directory reads back into the per-expert factors the engine trained."""

import pytest
import torch

from drlora_core.adapter_files import AdapterFilesError, read_adapter
from drlora_core.export import export_peft
from tests.support.engine import adapted


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "module_list"])
def test_read_back_gives_each_experts_update_at_its_rank(family, tmp_path):
    _, adapter = adapted(family)
    export_peft(adapter, tmp_path / "adapter", base_model=family)
    stored = read_adapter(tmp_path / "adapter")
    assert [list(s.ranks) for s in stored.sites] == adapter.ranks()
    for site, bank in zip(stored.sites, adapter.banks, strict=True):
        assert site.style == ("module_list" if family == "module_list" else "fused")
        for name in bank.projection_names:
            assert torch.allclose(site.delta(name), bank.delta_weight(name).detach(), atol=1e-6)
            a, b = site.factors(name, 0)
            assert a.shape[0] == b.shape[1] == site.ranks[0]


def test_trained_routers_come_back_by_model_path(tmp_path):
    _, adapter = adapted("mixtral")
    export_peft(adapter, tmp_path / "adapter", base_model="m", routers=True)
    stored = read_adapter(tmp_path / "adapter")
    site = adapter.sites[0]
    assert torch.equal(stored.routers[f"{site.router_path}.weight"], site.router.weight.detach())


def test_a_directory_without_the_ranks_file_is_refused_by_name(tmp_path):
    with pytest.raises(AdapterFilesError, match=r"drlora_ranks\.json"):
        read_adapter(tmp_path)


def test_a_per_expert_export_is_refused_with_what_to_use_instead(tmp_path):
    from drlora_core.export_layouts import write_adapter
    from drlora_core.export_options import ExportOptions

    _, adapter = adapted("qwen3_moe")
    export_peft(adapter, tmp_path / "adapter", base_model="qwen3_moe")
    write_adapter(read_adapter(tmp_path / "adapter"), tmp_path / "per-expert", ExportOptions(layout="per_expert"))
    with pytest.raises(AdapterFilesError, match="per_expert export"):
        read_adapter(tmp_path / "per-expert")
