"""The input spec (issue 18): defaults from the model's origin, the user's overrides, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from autoprune.cli import main
from autoprune.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from autoprune.export import load_pruned
from autoprune.measure import count_cost
from autoprune.models import create_model
from autoprune.models.preprocess import check_input_size, model_defaults, resolve_input
from autoprune.pipeline import run
from autoprune.spec import InputSpec, JobSpec, SpecError


def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()  # fmt: skip


def _onnx(path: Path, side: int, *, dynamic_hw: bool = False) -> Path:
    """A tiny conv net exported at ``side`` px (the legacy exporter: fast, and it can mark H/W dynamic)."""
    axes = {"x": {0: "n", 2: "h", 3: "w"} if dynamic_hw else {0: "n"}, "y": {0: "n"}}
    torch.manual_seed(0)
    torch.onnx.export(
        _tiny_net(), (torch.zeros(1, 3, side, side),), str(path), dynamo=False,
        input_names=["x"], output_names=["y"], dynamic_axes=axes,
    )  # fmt: skip
    return path


def test_cifar_net_keeps_the_data_size_and_its_statistics():
    pre = resolve_input("resnet20", InputSpec())
    assert (pre.size, pre.crop, pre.normalize, pre.mean) == (None, "none", "dataset", None)


def test_torchvision_resnet18_takes_224_with_imagenet_statistics():
    pre = model_defaults("resnet18")
    assert (pre.size, pre.resize, pre.crop, pre.interpolation) == ((224, 224), 256, "center", "bilinear")
    assert pre.normalize == "imagenet" and "ResNet18_Weights" in pre.source


def test_inception_and_efficientnet_take_their_own_sizes():
    inception = model_defaults("inception_v3")
    assert (inception.size, inception.resize) == ((299, 299), 342)
    b3 = model_defaults("efficientnet_b3")
    assert (b3.size, b3.resize, b3.interpolation) == ((300, 300), 320, "bicubic")


def test_onnx_graph_takes_its_static_size(tmp_path):
    path = _onnx(tmp_path / "m.onnx", 64)
    assert model_defaults(f"onnx:{path}").size == (64, 64)
    assert resolve_input(f"onnx:{path}", InputSpec(size=64)).size == (64, 64)
    with pytest.raises(SpecError, match=r"takes 64x64 inputs .* not --input-size 96x96"):
        resolve_input(f"onnx:{path}", InputSpec(size=96))


def test_onnx_graph_with_dynamic_height_and_width_is_refused(tmp_path):
    path = _onnx(tmp_path / "dyn.onnx", 32, dynamic_hw=True)
    with pytest.raises(SpecError, match="dynamic input height/width.*export it with a static H and W"):
        resolve_input(f"onnx:{path}", InputSpec())


def test_the_users_fields_override_the_models():
    pre = resolve_input("resnet18", InputSpec(size="96x80"))
    assert (pre.size, pre.resize, pre.crop) == ((96, 80), 110, "center")  # the model's 256/224 resize ratio
    assert pre.normalize == "imagenet"
    given = resolve_input("resnet18", InputSpec(size=64, resize=64, mean="0.5,0.5,0.5", std=[0.25, 0.25, 0.25]))
    assert (given.resize, given.normalize, given.mean, given.std) == (64, "given", (0.5,) * 3, (0.25,) * 3)
    assert resolve_input("resnet20", InputSpec(normalize="imagenet")).normalize == "imagenet"
    assert resolve_input("resnet20", InputSpec(size=40)).size == (40, 40)


@pytest.mark.parametrize(
    ("arch", "fields", "message"),
    [
        ("resnet18", {"mean": [0.5], "std": [0.2]}, "have 1 values but resnet18 takes 3-channel inputs"),
        ("resnet18", {"mean": [0.5, 0.5, 0.5]}, "given together"),
        ("resnet18", {"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}, "input.mean has 2 values and input.std 3"),
        ("resnet18", {"size": "96x", "mean": None}, "N or HxW"),
        ("resnet18", {"size": 224, "resize": 200}, "smaller than the 224x224 centre crop"),
        ("resnet20", {"resize": 40}, "give it with --crop center"),
        ("resnet20", {"normalize": "none", "mean": [0.1] * 3, "std": [0.2] * 3}, "not both"),
    ],
)
def test_bad_input_specs_are_spec_errors(arch, fields, message):
    with pytest.raises(SpecError, match=message):
        resolve_input(arch, InputSpec(**fields))


def test_a_size_the_network_cannot_take_is_found_on_meta():
    check_input_size(create_model("cifar_vgg16_bn"), (3, 32, 32), "cifar_vgg16_bn")
    with pytest.raises(SpecError, match=r"cifar_vgg16_bn cannot take 16x16 inputs .*Output size is too small"):
        check_input_size(create_model("cifar_vgg16_bn"), (3, 16, 16), "cifar_vgg16_bn")


def test_cli_refuses_bad_input_with_a_message(capsys, tmp_path):
    base = ["prune", "--data", "digits", "--budget", "flops=0.5", "--out", str(tmp_path / "o")]
    cases = [
        (["--arch", "resnet18", "--mean", "0.5", "--std", "0.5"], "takes 3-channel inputs"),
        (["--arch", "resnet20", "--input-size", "abc"], "N or HxW"),
        (["--arch", "cifar_vgg16_bn", "--input-size", "8"], "cannot take 8x8 inputs"),
    ]
    for flags, message in cases:
        code = main([*base, *flags])
        output = capsys.readouterr()
        assert code == 2 and message in output.out + output.err and "Traceback" not in output.err
    assert not (tmp_path / "o" / "report.json").exists()


def _pngs(root: Path, side: int) -> Path:
    for split, count in (("train", 6), ("test", 2)):
        for label, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (side, side), tuple(c + 5 * i for c in colour)).save(folder / f"{i}.png")
    return root


def test_folder_of_48px_images_pruned_at_40px(tmp_path):
    """The report's MACs are those of a 40x40 input; spec.json and report.json record the input,
    and the exported model comes back with the transform that feeds it."""
    data = _pngs(tmp_path / "pngs", 48)
    spec = JobSpec(
        arch="resnet20", data=f"folder:{data}", budget="flops=0.5", out_dir=str(tmp_path / "out"),
        input={"size": 40, "normalize": "imagenet"}, finetune={"epochs": 0}, exports=(), ensure_faster=False,
        latency_repeats=2, calibration_batches=1, device="cpu", target={"runtime": "torch"}, method="uniform",
    )  # fmt: skip
    report = run(spec)
    assert report.macs_before == count_cost(create_model("resnet20", num_classes=2), torch.zeros(1, 3, 40, 40)).macs
    assert report.input is not None and report.input["size"] == [40, 40]
    assert report.input["mean"] == list(IMAGENET_MEAN) and report.input["std"] == list(IMAGENET_STD)
    written = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert written["input_shape"] == [3, 40, 40] and written["input"]["normalize"] == "imagenet"
    model, transform = load_pruned(
        tmp_path / "out" / "spec.json", tmp_path / "out" / "model.safetensors", with_transform=True
    )
    x = transform(Image.open(data / "test" / "c0" / "0.png"))
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    assert model(x[None]).shape == (1, 2)


def test_the_transform_matches_the_loader():
    """The shipped transform and the data loader bring an image to the same tensor."""
    pre = Preprocess(size=(20, 20), crop="center", resize=24, normalize="imagenet").with_stats(
        IMAGENET_MEAN, IMAGENET_STD
    )
    image = Image.linear_gradient("L").convert("RGB").resize((50, 30))
    from autoprune.data.loader import normalize
    from autoprune.data.preprocess import pil_image

    loaded = torch.from_numpy(__import__("numpy").asarray(pil_image(image, pre))).permute(2, 0, 1)
    expected = normalize(loaded[None], IMAGENET_MEAN, IMAGENET_STD)[0]
    assert torch.allclose(pre.transform()(image), expected, atol=1e-5)


def test_timm_models_take_their_pretrained_cfg(monkeypatch):
    """timm is optional (not installed here): its ``pretrained_cfg`` lookup is stood in for."""
    from types import SimpleNamespace

    from autoprune.models import preprocess

    cfg = {"input_size": (3, 288, 288), "crop_pct": 0.9, "interpolation": "bicubic",
           "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # fmt: skip
    fake = SimpleNamespace(models=SimpleNamespace(get_pretrained_cfg=lambda name: cfg if name == "toynet" else None))
    monkeypatch.setattr(preprocess, "_timm", lambda: fake)
    monkeypatch.setattr(preprocess, "_timm_names", lambda: ("toynet",))
    pre = model_defaults("timm:toynet")
    assert (pre.size, pre.resize, pre.crop, pre.interpolation) == ((288, 288), 320, "center", "bicubic")
    assert (pre.normalize, pre.mean, pre.std) == ("given", (0.5,) * 3, (0.5,) * 3)
