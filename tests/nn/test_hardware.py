"""nn.hardware: which CPU this is, as far as it picks the faster kernel."""
import pytest
import torch

from starflow.nn import hardware


@pytest.fixture
def fresh(monkeypatch):
    hardware.cpu_info.cache_clear()
    hardware.intel_mkl.cache_clear()
    yield
    hardware.cpu_info.cache_clear()
    hardware.intel_mkl.cache_clear()


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
def test_the_vendor_comes_from_cpuinfo_and_only_intel_with_mkl_counts(fresh, monkeypatch, vendor):
    monkeypatch.setattr(hardware.Path, "read_text", lambda self: f"processor\t: 0\nvendor_id\t: {vendor}\n")
    assert hardware.cpu_vendor() == vendor
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    assert hardware.intel_mkl() == (vendor == "GenuineIntel")
    hardware.intel_mkl.cache_clear()
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)     # e.g. an OpenBLAS build
    assert not hardware.intel_mkl()


def test_without_cpuinfo_the_processor_string_or_nothing(fresh, monkeypatch):
    def missing(self):
        raise OSError("no /proc")
    monkeypatch.setattr(hardware.Path, "read_text", missing)
    monkeypatch.setattr(hardware.platform, "processor", lambda: "Intel64 Family 6 Model 143, GenuineIntel")
    assert hardware.cpu_vendor() == "GenuineIntel"
    monkeypatch.setattr(hardware.platform, "processor", lambda: "arm")
    assert hardware.cpu_vendor() == ""


def test_a_missing_probe_is_no_feature():
    assert hardware.cpu_has("_no_such_probe") is False
    assert isinstance(hardware.cpu_has("_is_amx_tile_supported"), bool)
