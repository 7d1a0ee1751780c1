"""The engine's public names, pinned (as httpx pins its exports), and the promise that importing them is lazy."""

import subprocess
import sys

import pytest

import drlora_core

PUBLIC = [  # in the order ruff's RUF022 keeps __all__
    "DEMO_MODEL_ID", "Adapter", "ConfigError", "DatasetError", "ExpertStats", "GrowthEvent", "Hooks", "LoraConfig",
    "PreparedRun", "RunConfig", "RunResult", "StepMetrics", "StopReason", "TrainConfig", "TrainResult",
    "TrainingCallback", "__version__", "attach", "export_merged", "export_peft", "prepare_run", "train",
    "train_prepared", "train_run",
]


def test_all_names_the_public_api():
    assert drlora_core.__all__ == PUBLIC


@pytest.mark.parametrize("name", [n for n in PUBLIC if n != "__version__"])
def test_each_public_name_resolves_to_the_engine_module_that_defines_it(name):
    value = getattr(drlora_core, name)
    module = getattr(value, "__module__", None)
    if module is not None and name != "StopReason":  # a Literal alias reports `typing` as its module
        assert module.startswith("drlora_core."), (name, module)
    assert name in dir(drlora_core)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        drlora_core.nothing_here  # noqa: B018


def test_importing_the_package_and_its_standard_library_modules_loads_no_torch():
    code = ("import sys, drlora_core, drlora_core.formats, drlora_core.atomic, drlora_core.config; "
            "from drlora_core import RunConfig, DatasetError; "
            "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
