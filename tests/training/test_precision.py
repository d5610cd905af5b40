"""train.precision=auto: bf16 only where it is fast (CUDA with native bf16, CPUs with AMX)."""

import pytest
import torch

from genrec.config import TrainConfig
from genrec.errors import ConfigError
from genrec.training import precision
from genrec.training.trainer import autocast

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_decisions():
    """Decisions are cached per process; these tests fake the hardware, so no fake may outlive them."""
    real_amx = precision.cpu_has_amx
    real_amx.cache_clear()
    precision.resolve_precision.cache_clear()
    yield
    real_amx.cache_clear()
    precision.resolve_precision.cache_clear()


def test_auto_is_the_default_and_explicit_choices_are_kept():
    assert TrainConfig().precision == "auto"
    assert precision.resolve_precision("fp32", CPU) == ("fp32", "train.precision")
    assert precision.resolve_precision("bf16", CPU)[0] == "bf16"
    assert precision.describe("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError, match="train.precision='fp16'"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("flags, amx", [
    ("fpu sse avx2 avx512f avx512_bf16", False),  # AVX-512 bf16 but no AMX tiles (e.g. Zen 4)
    ("fpu avx512f amx_bf16 amx_tile amx_int8", True),  # Sapphire Rapids
])
def test_amx_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, amx):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision.sys, "platform", "linux")
    assert precision.cpu_has_amx(str(cpuinfo)) is amx
    assert precision.cpu_has_amx(str(tmp_path / "missing")) is False
    monkeypatch.setattr(precision.sys, "platform", "darwin")
    precision.cpu_has_amx.cache_clear()
    assert precision.cpu_has_amx(str(cpuinfo)) is False


def test_auto_on_cpu_follows_amx(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    assert precision.describe("auto", CPU) == "fp32 (auto: no AMX on this CPU)"
    with autocast(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")
    precision.resolve_precision.cache_clear()
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert precision.describe("auto", CPU) == "bf16 (auto: CPU with AMX)"
    with autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("native, want", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_native_bf16(monkeypatch, native, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native and not including_emulation)
    assert precision.resolve_precision("auto", torch.device("cuda", 0))[0] == want
