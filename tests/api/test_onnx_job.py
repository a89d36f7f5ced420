"""ONNX intake over HTTP: an uploaded .onnx graph is pruned end to end; bad graphs get a 422."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import service_harness
import torch
from nets import TinyResNeXt
from onnx import TensorProto, helper, numpy_helper
from service_harness import submit, wait_for

import autoprune
from autoprune.data import iterate_batches, load_data

service = service_harness.service  # fixture
worker = service_harness.worker  # fixture


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory) -> Path:
    """A ResNeXt-style net (residual add, group conv) for digits, exported as autoprune exports."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(TinyResNeXt().eval(), (torch.zeros(2, *load_data("digits").input_shape),), str(path),
                      dynamo=True, external_data=False, dynamic_shapes=({0: batch},))  # fmt: skip
    return path


def test_an_onnx_graph_is_pruned_end_to_end(service, worker, digits_onnx, tmp_path):
    client = service.client(service.token("onnx"))
    with open(digits_onnx, "rb") as f:
        response = submit(client, {"onnx": ("net.onnx", f)}, arch=None, criterion="l1")
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert response.json()["inputs"]["onnx"]["sha256"] == hashlib.sha256(digits_onnx.read_bytes()).hexdigest()
    body = wait_for(lambda: (b := client.get(f"/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and b,
                    180, "the job to finish", 0.3)  # fmt: skip
    assert body["status"] == "succeeded", body
    report = body["result"]
    assert report["flops_after"] <= 0.5 * report["flops_before"]

    names = {a["name"] for a in client.get(f"/jobs/{job_id}/artifacts").json()["data"]}
    assert {"source.onnx", "spec.json", "model.safetensors", "model.onnx", "report.json"} <= names
    for name in ("source.onnx", "spec.json", "model.safetensors"):
        (tmp_path / name).write_bytes(client.get(f"/jobs/{job_id}/artifacts/{name}").content)
    assert (tmp_path / "source.onnx").read_bytes() == digits_onnx.read_bytes()
    model = autoprune.load_pruned(tmp_path / "spec.json", tmp_path / "model.safetensors")
    x, _ = next(iter(iterate_batches(load_data("digits"), "test", 16)))
    with torch.inference_mode():
        assert model(x).shape == (16, 10)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]


def _graph(path: Path, op: str, size: int = 32) -> Path:
    """Conv → ``op`` → pool → 10 logits, written with onnx.helper, for a 3 x size x size input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])
    w = numpy_helper.from_array(np.full((10, 3, 1, 1), 0.1, np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node(op, ["c"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bad_onnx_submissions_are_refused(service, digits_onnx, tmp_path):
    client = service.client(service.token("onnx-bad"))
    graph = digits_onnx.read_bytes()

    response = submit(client, {"onnx": ("net.onnx", graph)})  # arch=resnet20 too
    assert response.status_code == 422 and "exactly one of 'arch'" in response.json()["detail"]
    assert submit(client, {}, arch=None).status_code == 422
    for arch in ("onnx", f"onnx:{digits_onnx}"):
        response = submit(client, {}, arch=arch)
        assert response.status_code == 422 and "'onnx' file" in response.json()["detail"], response.text
    assert submit(client, {"onnx": ("net.bin", graph)}, arch=None).status_code == 415
    assert submit(client, {"weights": ("net.onnx", graph)}).status_code == 415  # a graph is never taken as weights

    unconvertible = _graph(tmp_path / "bad.onnx", "Shrink").read_bytes()
    response = submit(client, {"onnx": ("bad.onnx", unconvertible)}, arch=None)
    assert response.status_code == 422, response.text
    assert "Shrink" in response.json()["detail"] and "opset 17" in response.json()["detail"]
    fixed_at_8 = _graph(tmp_path / "small.onnx", "Relu", size=8).read_bytes()  # the data follow the graph's 8x8...
    response = submit(client, {"onnx": ("small.onnx", fixed_at_8)}, arch=None, input='{"size": 32}')
    detail = response.json()["detail"]  # ...so only an input size that contradicts it is refused
    assert response.status_code == 422 and "takes 8x8 inputs (fixed in the graph)" in detail, response.text
    assert str(service.root) not in detail and "/tmp" not in detail  # no server path
    response = submit(client, {"onnx": ("junk.onnx", b"\x08\x07not a graph" * 10)}, arch=None)
    assert response.status_code == 422, response.text
    assert not [j for j in client.get("/jobs").json()["data"]], "no refused submission was queued"
