import pytest
import torch

from fastdarts import backends
from fastdarts.backends import BACKENDS, select_backend


def test_registry_names_and_order():
    assert list(BACKENDS) == ["triton", "cuda", "cpu", "reference"]


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend(torch.zeros(2), backend="fast")


def test_explicit_backend_that_cannot_run_lists_every_reason(monkeypatch):
    x = torch.zeros(2, 3)
    with pytest.raises(NotImplementedError) as info:
        select_backend(x, backend="cuda")
    message = str(info.value)
    for name in BACKENDS:
        assert f"  {name}:" in message
    assert "torch sees no CUDA device" in message or torch.cuda.is_available()


def test_explicit_backend_rejects_unsupported_dtype():
    if not BACKENDS["cpu"].is_available():
        pytest.skip("extension not built")
    with pytest.raises(NotImplementedError, match="dtype bfloat16"):
        select_backend(torch.zeros(2, dtype=torch.bfloat16), backend="cpu")


def test_env_var_selects_backend(monkeypatch):
    monkeypatch.setenv("FASTDARTS_BACKEND", "reference")
    assert select_backend(torch.zeros(2)) is BACKENDS["reference"]
    monkeypatch.setenv("FASTDARTS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTDARTS_BACKEND"):
        select_backend(torch.zeros(2))


def test_auto_on_cpu_prefers_the_cpu_kernels(monkeypatch):
    monkeypatch.delenv("FASTDARTS_BACKEND", raising=False)
    if not BACKENDS["cpu"].is_available():
        pytest.skip("extension not built")
    assert select_backend(torch.zeros(2)) is BACKENDS["cpu"]


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.delenv("FASTDARTS_BACKEND", raising=False)
    monkeypatch.setattr(backends._ext, "C", None)
    monkeypatch.setattr(backends._ext, "IMPORT_ERROR", ImportError("simulated"))
    monkeypatch.setattr(backends, "_warned", set())
    x = torch.zeros(2)
    with pytest.warns(RuntimeWarning, match="simulated"):
        assert select_backend(x) is BACKENDS["reference"]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_backend(x) is BACKENDS["reference"]  # no second warning


def test_info_reports_every_backend(capsys):
    from fastdarts.info import main
    assert main() == 0
    out = capsys.readouterr().out
    for name in BACKENDS:
        assert name in out
    assert "torch" in out
    from fastdarts.backends import auto_picks
    picks = auto_picks()
    assert picks["cpu"] in BACKENDS and picks["cpu"] != "triton"  # triton needs a GPU tensor
    assert f"cpu tensors -> {picks['cpu']}" in out
