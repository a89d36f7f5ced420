"""Architecture registry (sizes, shapes, names) and safe weights intake (formats, refusals)."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from autoprune.errors import ModelIntakeError, UnknownNameError, UnsafeInputError
from autoprune.models import WeightLimits, create_model, list_archs, load_weights, read_state_dict

CIFAR_ARCHS = ["resnet20", "resnet32", "resnet56", "resnet110", "cifar_vgg16", "cifar_vgg16_bn"]
IntakeErrors = (ModelIntakeError, UnsafeInputError)


def count_macs(model: nn.Module, size: int) -> int:
    """Conv + linear multiply-accumulates for one ``size``×``size`` RGB image."""
    total = 0

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * kh * kw
        else:
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20").eval()


def outputs(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(123)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 32, 32))


# --- architectures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "macs", "params"),
    [
        ("resnet20", (40.5e6, 41.5e6), (0.26e6, 0.28e6)),
        ("resnet56", (125e6, 127e6), (0.85e6, 0.87e6)),
        ("cifar_vgg16_bn", (313.0e6, 314.0e6), (14.97e6, 15.0e6)),
    ],
)
def test_cifar_sizes_match_the_papers(arch: str, macs: tuple[float, float], params: tuple[float, float]) -> None:
    model = create_model(arch)
    assert macs[0] <= count_macs(model, 32) <= macs[1]
    assert params[0] <= n_params(model) <= params[1]


def test_torchvision_resnet18_macs() -> None:
    macs = count_macs(create_model("resnet18", num_classes=1000), 224)
    assert macs == pytest.approx(1.814e9, rel=0.01)


def test_resnet_uses_projection_shortcuts() -> None:
    model = create_model("resnet20")
    shortcut = model.layer2[0].downsample
    assert isinstance(shortcut[0], nn.Conv2d) and shortcut[0].kernel_size == (1, 1)
    assert model.layer1[0].downsample is None


@pytest.mark.parametrize("arch", [*CIFAR_ARCHS, "mobilenet_v2"])
def test_forward_shape(arch: str) -> None:
    model = create_model(arch, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_cifar_in_channels() -> None:
    model = create_model("resnet20", num_classes=5, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_torchvision_refuses_other_channel_counts() -> None:
    with pytest.raises(ModelIntakeError, match="3-channel"):
        create_model("resnet18", in_channels=1)


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet5")
    assert "resnet50" in str(info.value) and "resnet56" in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_prefix_without_timm() -> None:
    with pytest.raises(ModelIntakeError, match="optional package timm"):
        create_model("timm:resnet18")


def test_list_archs_has_cifar_and_torchvision() -> None:
    names = list_archs()
    assert set(CIFAR_ARCHS) <= set(names)
    assert {"resnet18", "mobilenet_v2", "vgg16_bn"} <= set(names)


# --- weights: formats that load ------------------------------------------------------------


def test_safetensors_round_trip(tmp_path: Path, resnet20: nn.Module) -> None:
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(resnet20.state_dict(), path)
    torch.manual_seed(1)
    other = create_model("resnet20")
    load_weights(other, path)
    assert torch.equal(outputs(other), outputs(resnet20))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_torch_round_trip(tmp_path: Path, resnet20: nn.Module, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    torch.save(resnet20.state_dict(), path)
    torch.manual_seed(1)
    other = create_model("resnet20")
    load_weights(other, path)
    assert torch.equal(outputs(other), outputs(resnet20))


def test_wrapped_and_dataparallel_checkpoints(tmp_path: Path, resnet20: nn.Module) -> None:
    sd = resnet20.state_dict()
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": sd, "epoch": 3, "best_acc": 93.1}, wrapped)
    prefixed = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, prefixed)
    for path in (wrapped, prefixed):
        got = read_state_dict(path)
        assert got.keys() == sd.keys()
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_dtype_is_cast_to_the_model(tmp_path: Path, resnet20: nn.Module) -> None:
    path = tmp_path / "half.safetensors"
    half = {k: v.half() if v.is_floating_point() else v for k, v in resnet20.state_dict().items()}
    safetensors.torch.save_file(half, path)
    other = create_model("resnet20")
    load_weights(other, path)
    assert other.conv1.weight.dtype == torch.float32
    assert torch.allclose(outputs(other), outputs(resnet20), atol=1e-1)


# --- weights: mismatches -------------------------------------------------------------------


def test_shape_mismatch_names_the_parameter(tmp_path: Path, resnet20: nn.Module) -> None:
    sd = resnet20.state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    with pytest.raises(ModelIntakeError) as info:
        load_weights(create_model("resnet20"), path)
    assert str(info.value) == ("layer1.0.conv1.weight: file has (16, 3, 3, 3), model expects (16, 16, 3, 3)")


def test_missing_and_unexpected_keys(tmp_path: Path, resnet20: nn.Module) -> None:
    sd = resnet20.state_dict()
    del sd["fc.bias"]
    sd["head.weight"] = torch.zeros(1)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(sd, path)
    match = r"missing 1 keys: fc\.bias.*unexpected 1 keys: head"
    with pytest.raises(ModelIntakeError, match=match):
        load_weights(create_model("resnet20"), path)


def test_wrong_architecture_lists_at_most_ten_keys(tmp_path: Path, resnet20: nn.Module) -> None:
    path = tmp_path / "w.pt"
    torch.save(resnet20.state_dict(), path)
    with pytest.raises(ModelIntakeError, match=r"\(\+\d+ more\)"):
        load_weights(create_model("resnet32"), path)


def test_non_tensor_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2), "note": "hello"}, path)
    with pytest.raises(ModelIntakeError, match="'note'"):
        read_state_dict(path)


# --- weights: refusals ---------------------------------------------------------------------


def _payloads(marker: Path) -> list[tuple[object, ...]]:
    return [(open, (str(marker), "w")), (os.system, (f"touch '{marker}'",))]


@pytest.mark.parametrize("which", [0, 1])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, which: int) -> None:
    def evil(marker: Path) -> object:
        class Evil:
            def __reduce__(self) -> tuple[object, ...]:
                return _payloads(marker)[which]

        return {"weight": Evil()}

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(evil(marker), path)
    with pytest.raises(UnsafeInputError, match="pickled code"):
        read_state_dict(path)
    assert not marker.exists()

    # Control: the payload is live, so the refusal above is what kept the marker away.
    control_marker = tmp_path / "control"
    control = tmp_path / "control.pt"
    torch.save(evil(control_marker), control)
    loaded = torch.load(control, weights_only=False)["weight"]
    if hasattr(loaded, "close"):
        loaded.close()
    assert control_marker.exists()


def test_whole_module_is_refused(tmp_path: Path, resnet20: nn.Module) -> None:
    path = tmp_path / "model.pt"
    torch.save(resnet20, path)
    with pytest.raises(UnsafeInputError, match=r"state_dict\(\)") as info:
        read_state_dict(path)
    assert "weights_only=False" not in str(info.value)


def test_truncated_safetensors(tmp_path: Path, resnet20: nn.Module) -> None:
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(resnet20.state_dict(), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IntakeErrors, match="truncated"):
        read_state_dict(path)


def _safetensors_bytes(header: dict[str, object], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_huge_tensor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    header = {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4]}}
    path.write_bytes(_safetensors_bytes(header, b"\0" * 4))
    with pytest.raises(UnsafeInputError, match="'w'.*1000000000000 elements"):
        read_state_dict(path)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "do not match"),
        ({"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "malformed shape"),
    ],
)
def test_safetensors_lying_header(tmp_path: Path, entry: dict[str, object], match: str) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(_safetensors_bytes({"w": entry}, b"\0" * 4))
    with pytest.raises(ModelIntakeError, match=match):
        read_state_dict(path)


def test_safetensors_header_longer_than_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(ModelIntakeError, match="truncated"):
        read_state_dict(path)


def _lie_about_first_member(path: Path, size: int) -> None:
    """Rewrite the uncompressed size of the first central-directory entry of a zip."""
    raw = bytearray(path.read_bytes())
    entry = raw.index(b"PK\x01\x02")
    raw[entry + 24 : entry + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(raw))


def test_zip_declaring_a_huge_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(4)}, path)
    _lie_about_first_member(path, 0x7FFF_FFF0)
    with pytest.raises(UnsafeInputError, match="uncompressed bytes"):
        read_state_dict(path, WeightLimits(max_uncompressed_bytes=1 << 20))
    with pytest.raises(UnsafeInputError, match="8-byte elements"):
        read_state_dict(path, WeightLimits(max_tensor_elements=1000))
    with pytest.raises(UnsafeInputError, match="compression ratio"):
        read_state_dict(path)


@pytest.mark.parametrize("suffix", [".pt2", ".ts", ".jit", ".pkl", ".onnx"])
def test_program_formats_are_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"whatever")
    with pytest.raises(UnsafeInputError, match="outputs only"):
        read_state_dict(path)


def test_unknown_suffix_lists_accepted(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_bytes(b"whatever")
    with pytest.raises(ModelIntakeError, match=r"\.safetensors, \.pt, \.pth, \.bin"):
        read_state_dict(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelIntakeError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")


def test_file_over_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(100)}, path)
    with pytest.raises(UnsafeInputError, match="over the limit"):
        read_state_dict(path, WeightLimits(max_file_bytes=100))


def test_corrupt_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(IntakeErrors):
        read_state_dict(path)
