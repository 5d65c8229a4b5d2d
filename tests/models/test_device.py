import pytest
import torch

from models.device import autocast_for, has_native_bf16, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-bf16"])
def cpu_bf16(request, monkeypatch) -> bool:
    """A CPU with and one without AVX512-BF16, whatever this machine has."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: request.param)
    return request.param


def test_auto_is_bf16_on_a_cpu_with_native_bf16_and_fp32_on_one_without(cpu_bf16):
    assert has_native_bf16(CPU) is cpu_bf16
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_bf16 else "fp32")


def test_auto_is_bf16_on_cuda_and_fp32_on_mps(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


def test_fp32_asked_for_is_kept_even_where_bf16_is_native(cpu_bf16):
    assert resolve_precision("fp32", CPU) == "fp32"


def test_bf16_where_it_is_not_native_warns_that_it_is_slow_and_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16 matrix multiply.*slower than fp32"):
        assert resolve_precision("bf16", CPU) == "bf16"


def test_an_unknown_precision_is_refused():
    with pytest.raises(
        ValueError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16"
    ):
        resolve_precision("fp16", CPU)


def test_bf16_autocast_multiplies_in_bf16_on_a_cpu_and_fp32_does_not():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast_for(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_for(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32
