"""ONNX intake: exported graphs convert back to torch, prune for real and rebuild; bad graphs are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from autoprune.errors import ModelIntakeError, UnsafeInputError
from autoprune.export import ModelSpec, load_pruned, save_weights, write_json
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.measure import count_cost
from autoprune.models import create_model
from autoprune.models.onnx_graph import check_input_shape, convert_onnx, describe_onnx
from autoprune.surgery import apply_plan, make_plan

X = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def export(model: torch.nn.Module, path: Path, *, dynamo: bool) -> Path:
    """The two exporters users meet: torch.export-based (the default, as autoprune exports) and legacy."""
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(model, (X[:2],), str(path), dynamo=True, external_data=False, dynamic_shapes=({0: batch},))
    else:
        torch.onnx.export(model, (X[:2],), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10).eval()


@pytest.fixture(scope="module")
def resnet_onnx(resnet, tmp_path_factory) -> Path:
    return export(resnet, tmp_path_factory.mktemp("onnx") / "resnet20.onnx", dynamo=True)


def hand_built(path: Path, nodes, *, inputs=None, output_shape=("n", 4), opset: int = 17, inits=()) -> Path:
    """A small graph written with onnx.helper: x (n, 3, 8, 8) → conv w (4 channels) → nodes → y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))
    w = numpy_helper.from_array(np.full((4, 3, 1, 1), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), *nodes], "g", inputs or [x], [y], [w, *inits]
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("acme", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def pooled(*middle) -> list:
    """``middle`` nodes from c to m, then global average pool + flatten to y."""
    return [*middle, helper.make_node("GlobalAveragePool", ["m"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_exported_resnet_converts_back_to_the_same_function(resnet, resnet_onnx, tmp_path, exporter):
    path = resnet_onnx if exporter == "dynamo" else export(resnet, tmp_path / "m.onnx", dynamo=False)
    assert describe_onnx(path) == ((3, 32, 32), 10)
    converted = create_model(f"onnx:{path}", num_classes=10, in_channels=3)
    with torch.no_grad():
        assert (converted(X) - resnet(X)).abs().max() < 1e-4


def test_classes_and_channels_are_fixed_by_the_graph(resnet_onnx):
    assert isinstance(create_model(f"onnx:{resnet_onnx}"), torch.nn.Module)  # None: take the graph's
    with pytest.raises(ModelIntakeError, match="has 10 classes, the data needs 100"):
        create_model(f"onnx:{resnet_onnx}", num_classes=100)
    with pytest.raises(ModelIntakeError, match="has 3 input channels, the data needs 1"):
        create_model(f"onnx:{resnet_onnx}", in_channels=1)
    with pytest.raises(ModelIntakeError, match="takes 3x32x32 inputs, the data is 3x8x8"):
        check_input_shape(resnet_onnx, (3, 8, 8))


def test_converted_resnet_prunes_to_a_smaller_model_equal_to_the_masked_original(resnet, resnet_onnx):
    model = convert_onnx(resnet_onnx)
    graph = build_graph(model, X[:1])
    assert not graph.skipped and len(graph.groups) == 12  # the logits Reshape became a Flatten: all groups cut
    scores = get_criterion("l1").score(graph, None)
    plan = make_plan(graph, scores, {g.id: g.channels // 2 for g in graph.groups})
    pruned = apply_plan(model, X[:1], plan)
    before, after = count_cost(model, X[:1]), count_cost(pruned, X[:1])
    assert after.macs < 0.5 * before.macs and after.params < before.params

    masked = convert_onnx(resnet_onnx)  # zero the removed channels where they are produced (BN is folded in)
    with torch.no_grad():
        for group in graph.groups:
            removed = set(group.removed_indices(plan.keep[group.id]))
            for module, dim, idxs, roots in graph.channel_map(group.id):
                gone = [i for i, r in zip(idxs, roots, strict=True) if r in removed]
                target = masked.get_submodule(next(n for n, m in model.named_modules() if m is module))
                if dim == "out" and gone:
                    target.weight[gone] = 0
                    if target.bias is not None:
                        target.bias[gone] = 0
        assert (pruned(X) - masked(X)).abs().max() < 1e-4
        assert (pruned(X) - resnet(X)).abs().max() > 1e-2  # the masking mattered


def test_spec_rebuilds_the_pruned_graph_from_its_own_directory(resnet_onnx, tmp_path, monkeypatch):
    model = convert_onnx(resnet_onnx)
    graph = build_graph(model, X[:1])
    plan = make_plan(graph, get_criterion("l1").score(graph, None), {g.id: 4 for g in graph.groups})
    pruned = apply_plan(model, X[:1], plan)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(resnet_onnx, out / "source.onnx")
    spec = ModelSpec(arch="onnx:source.onnx", num_classes=10, input_shape=(3, 32, 32), mean=(0.0,) * 3,
                     std=(1.0,) * 3, plans=(plan,))  # fmt: skip
    write_json(out / "spec.json", spec.to_dict())
    save_weights(pruned, out / "model.safetensors", spec)
    monkeypatch.chdir(tmp_path)  # resolved against the spec's directory, not the working one
    rebuilt = load_pruned(out / "spec.json", out / "model.safetensors")
    with torch.no_grad():
        assert torch.allclose(rebuilt(X), pruned(X), atol=1e-6)
    for arch in ("onnx:/etc/source.onnx", "onnx:../source.onnx", "onnx:a/../../source.onnx", "onnx:"):
        write_json(out / "bad.json", {**spec.to_dict(), "arch": arch})
        with pytest.raises(ModelIntakeError, match="relative path without"):
            load_pruned(out / "bad.json", out / "model.safetensors")
    # a link inside the directory may point within it, never out of it
    (out / "inside.onnx").symlink_to(out / "source.onnx")
    write_json(out / "linked.json", {**spec.to_dict(), "arch": "onnx:inside.onnx"})
    load_pruned(out / "linked.json", out / "model.safetensors")
    (out / "outside.onnx").symlink_to(resnet_onnx)
    write_json(out / "escaping.json", {**spec.to_dict(), "arch": "onnx:outside.onnx"})
    with pytest.raises(ModelIntakeError, match="outside the spec's directory"):
        load_pruned(out / "escaping.json", out / "model.safetensors")


def test_every_unsupported_op_is_named_with_the_opset(tmp_path):
    path = hand_built(tmp_path / "ops.onnx", [
        helper.make_node("Shrink", ["c"], ["s"]),
        helper.make_node("Magic", ["s"], ["t"], domain="acme"),
        helper.make_node("GlobalMaxPool", ["t"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ])  # fmt: skip
    named = r"cannot convert these op types \(opset 17\): GlobalMaxPool, Shrink, acme::Magic"
    with pytest.raises(ModelIntakeError, match=named):
        convert_onnx(path)


def test_a_hand_built_graph_converts_and_matches_onnxruntime(tmp_path):
    path = hand_built(tmp_path / "ok.onnx", pooled(helper.make_node("Relu", ["c"], ["m"])))
    assert describe_onnx(path) == ((3, 8, 8), 4)
    assert convert_onnx(path)(torch.ones(3, 3, 8, 8)).shape == (3, 4)


def test_external_data_is_refused_before_it_is_read(tmp_path):
    model = onnx.load(hand_built(tmp_path / "m.onnx", pooled(helper.make_node("Relu", ["c"], ["m"]))))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    assert (tmp_path / "w.bin").exists()
    with pytest.raises(UnsafeInputError, match="external data"):
        convert_onnx(tmp_path / "ext.onnx")


def test_input_must_be_one_nchw_float_tensor(tmp_path):
    flat = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 192])
    with pytest.raises(ModelIntakeError, match="rank 4"):
        convert_onnx(hand_built(tmp_path / "rank.onnx", pooled(helper.make_node("Relu", ["c"], ["m"])), inputs=[flat]))
    second = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3, 8, 8]) for n in ("x", "z")]
    two = hand_built(tmp_path / "two.onnx", pooled(helper.make_node("Add", ["c", "c"], ["m"])), inputs=second)
    with pytest.raises(ModelIntakeError, match="2 inputs and 1 outputs"):
        convert_onnx(two)
    ints = helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", 3, 8, 8])
    with pytest.raises(ModelIntakeError, match="float32"):
        describe_onnx(hand_built(tmp_path / "u8.onnx", pooled(helper.make_node("Relu", ["c"], ["m"])), inputs=[ints]))


def test_a_graph_exported_with_a_fixed_batch_is_refused(tmp_path):
    shape = numpy_helper.from_array(np.array([1, 256], np.int64), "shape")
    fc = numpy_helper.from_array(np.zeros((256, 4), np.float32), "fc")
    nodes = [helper.make_node("Reshape", ["c", "shape"], ["r"]), helper.make_node("MatMul", ["r", "fc"], ["y"])]
    path = hand_built(tmp_path / "fixed.onnx", nodes, output_shape=(1, 4), inits=[shape, fc])
    with pytest.raises(ModelIntakeError, match="does not run on a batch of 2"):
        convert_onnx(path)


def test_corrupt_missing_and_oversized_files_are_refused(tmp_path, resnet_onnx):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelIntakeError, match="not an ONNX model|not a valid ONNX graph"):
        convert_onnx(tmp_path / "junk.onnx")
    with pytest.raises(ModelIntakeError, match="cannot read ONNX file"):
        convert_onnx(tmp_path / "nothing.onnx")
    with pytest.raises(UnsafeInputError, match="over the 1000-byte limit"):
        convert_onnx(resnet_onnx, max_bytes=1000)


def test_spec_json_round_trip_keeps_the_relative_reference(tmp_path):
    spec = ModelSpec(arch="onnx:source.onnx", num_classes=10, input_shape=(3, 32, 32), mean=(0.0,) * 3, std=(1.0,) * 3)
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))
    from autoprune.export import read_spec

    read = read_spec(tmp_path / "spec.json")
    assert read == spec and read.to_dict()["arch"] == "onnx:source.onnx" and read.base_dir == tmp_path.resolve()
