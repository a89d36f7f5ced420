"""Hostile and broken submissions: all refused with a 4xx and a message, nothing executed."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import service_harness
import torch
from safetensors.torch import save_file
from service_harness import TINY_FINETUNE, submit

from autoprune.models import create_model

service = service_harness.service  # fixture

SENTINEL = Path(f"/tmp/autoprune-pwned-{os.getpid()}")


class Payload:
    """Unpickling this runs `touch SENTINEL`."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {SENTINEL}",))


def _zip(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo({"traversal": "../../evil.npz"}.get(kind, "data/link"))
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        elif kind == "device":
            info.type = tarfile.CHRTYPE
        data = b"x" * 10 if kind == "traversal" else b""
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _safetensors_header(header: Any, body: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    good = tmp / "good.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(good))
    wide = create_model("resnet20", num_classes=100)
    wrong = tmp / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(wrong))
    zipped_pickle = io.BytesIO()
    torch.save({"conv1.weight": Payload()}, zipped_pickle)
    whole_module = io.BytesIO()
    torch.save(model, whole_module)
    return {
        "good": good.read_bytes(),
        "wrong_shapes": wrong.read_bytes(),
        "raw_pickle": pickle.dumps(Payload()),
        "zipped_pickle": zipped_pickle.getvalue(),
        "whole_module": whole_module.getvalue(),
        "zip_bomb": _zip({"train.npz": bytes(40 << 20)}),
        "too_many_members": _zip({f"f{i}.txt": b"x" for i in range(60)}),
    }


def weights(name: str, filename: str = "w.safetensors") -> Callable[[dict[str, bytes]], dict[str, Any]]:
    return lambda f: {"files": {"weights": (filename, f[name] if name in f else name.encode())}}


def raw_weights(data: bytes, filename: str = "w.safetensors") -> Callable[[dict[str, bytes]], dict[str, Any]]:
    return lambda f: {"files": {"weights": (filename, data)}}


def data_file(data: bytes | str, filename: str) -> Callable[[dict[str, bytes]], dict[str, Any]]:
    return lambda f: {"files": {"data": (filename, f[data] if isinstance(data, str) else data)}, "dataset": None}


def fields(**values: str | None) -> Callable[[dict[str, bytes]], dict[str, Any]]:
    return lambda f: dict(values)


def _npy(shape: tuple[int, ...], body: bytes, dtype: str = "|u1") -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


def _npz_tar(x_shape: tuple[int, ...], x_body: bytes) -> bytes:
    """A tar of train.npz (``x`` as declared, over whatever body) and a small test.npz."""
    n = x_shape[0]
    train = _zip({"x.npy": _npy(x_shape, x_body), "y.npy": _npy((n,), bytes(8 * n), "<i8")})
    test = _zip({"x.npy": _npy((2, 32, 32, 3), bytes(2 * 3072)), "y.npy": _npy((2,), bytes(16), "<i8")})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("train.npz", train), ("test.npz", test)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _onnx_with_a_huge_constant(elements: int) -> bytes:
    """A 3x32x32 → 10-class classifier plus ``ConstantOfShape([elements]) → ReduceSum → ×0 → Add``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])
    inits = [numpy_helper.from_array(np.full((10, 3), 0.1, np.float32), "w"),
             numpy_helper.from_array(np.array([elements], np.int64), "shape"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]  # fmt: skip
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["g"], transB=1),
             helper.make_node("ConstantOfShape", ["shape"], ["big"]),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=1),
             helper.make_node("Mul", ["s", "zero"], ["z"]), helper.make_node("Add", ["g", "z"], ["y"])]  # fmt: skip
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    return model.SerializeToString()


def _tiny_onnx(height: int | str, width: int | str) -> bytes:
    """A valid 3xHxW → 10-class classifier (average pool, linear); symbolic H/W when given as names."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, height, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])
    w = numpy_helper.from_array(np.full((10, 3), 0.1, np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def onnx_file(data: bytes) -> Callable[[dict[str, bytes]], dict[str, Any]]:
    return lambda f: {"files": {"onnx": ("model.onnx", data)}, "arch": None}


HUGE_TENSOR = {"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 4]}}
CASES: dict[str, tuple[Callable[[dict[str, bytes]], dict[str, Any]], int, str]] = {
    "pickle payload as .pt": (weights("raw_pickle", "evil.pt"), 422, "unsafe_input"),
    "pickle payload in a torch zip": (weights("zipped_pickle", "evil.pth"), 422, "unsafe_input"),
    "whole nn.Module pickled": (weights("whole_module", "model.pt"), 422, "unsafe_input"),
    "pickle as .pkl": (weights("raw_pickle", "evil.pkl"), 415, "unsafe_format"),
    "torch.export .pt2": (weights("raw_pickle", "model.pt2"), 415, "unsafe_format"),
    "TorchScript .ts": (weights("raw_pickle", "model.ts"), 415, "unsafe_format"),
    "weights with no known suffix": (weights("good", "weights.txt"), 415, "unsupported_format"),
    "truncated safetensors": (lambda f: {"files": {"weights": ("w.safetensors", f["good"][: len(f["good"]) // 2])}}, 422, "bad_model"),
    "safetensors header longer than the file": (raw_weights(_safetensors_header({}, length=10_000)), 422, "bad_model"),
    "safetensors header over 100 MB": (raw_weights(_safetensors_header({}, length=200_000_000)), 422, "unsafe_input"),
    "safetensors header not JSON": (raw_weights(_safetensors_header(b"{not json")), 422, "bad_model"),
    "safetensors declaring 1e12 elements": (raw_weights(_safetensors_header(HUGE_TENSOR, b"\0" * 4)), 422, "unsafe_input"),
    "weights of the wrong shapes": (weights("wrong_shapes"), 422, "bad_model"),
    "weights for another architecture": (lambda f: {"files": {"weights": ("w.safetensors", f["good"])}, "arch": "resnet32"}, 422, "bad_model"),
    "zip bomb": (data_file("zip_bomb", "data.zip"), 422, "unsafe_input"),
    "zip with ../ traversal": (data_file(_zip({"../../evil.npz": b"x"}), "data.zip"), 422, "unsafe_input"),
    "zip with an absolute path": (data_file(_zip({"/tmp/evil.npz": b"x"}), "data.zip"), 422, "unsafe_input"),
    "zip with a symlink": (data_file(_zip({}, symlink="data/link"), "data.zip"), 422, "unsafe_input"),
    "zip with too many members": (data_file("too_many_members", "data.zip"), 422, "unsafe_input"),
    "tar with a symlink": (data_file(_tar("symlink"), "data.tar"), 422, "unsafe_input"),
    "tar with a hard link": (data_file(_tar("hardlink"), "data.tar"), 422, "unsafe_input"),
    "tar with a device": (data_file(_tar("device"), "data.tar"), 422, "unsafe_input"),
    "tar with ../ traversal": (data_file(_tar("traversal"), "data.tar"), 422, "unsafe_input"),
    "archive without a dataset": (data_file(_zip({"readme.txt": b"hi"}), "data.zip"), 422, "bad_data"),
    "data that is not an archive": (data_file(b"\x93NUMPY", "train.npz"), 415, "unsupported_format"),
    "corrupt zip": (data_file(b"PK\x03\x04garbage", "data.zip"), 422, "bad_data"),
    "budget zero": (fields(budget='{"flops": 0}'), 422, "bad_budget"),
    "budget negative": (fields(budget='{"flops": -0.5}'), 422, "bad_budget"),
    "budget one": (fields(budget='{"params": 1.0}'), 422, "bad_budget"),
    "budget over one": (fields(budget='{"flops": 1.5}'), 422, "bad_budget"),
    "budget NaN": (fields(budget='{"flops": NaN}'), 422, "bad_budget"),
    "budget a string": (fields(budget='{"flops": "half"}'), 422, "bad_budget"),
    "budget of an unknown kind": (fields(budget='{"speed": 2}'), 422, "bad_budget"),
    "relative latency over one": (fields(budget='{"latency": 1.5}'), 422, "bad_budget"),
    "budget two kinds": (fields(budget='{"flops": 0.5, "params": 0.5}'), 422, "bad_budget"),
    "budget not JSON": (fields(budget="flops=half"), 422, "bad_json"),
    "budget missing": (fields(budget=None), 422, "missing_field"),
    "unknown method": (fields(method="magic"), 422, "unknown_name"),
    "unknown criterion": (fields(criterion="vibes"), 422, "unknown_name"),
    "unknown architecture": (fields(arch="resnet2000"), 422, "unknown_name"),
    "unknown dataset": (fields(dataset="imagenet"), 422, "unknown_name"),
    "arch missing": (fields(arch=None), 422, "missing_field"),
    "both dataset and data": (lambda f: {"files": {"data": ("d.zip", _zip({"a": b"b"}))}}, 422, "missing_field"),
    "finetune unknown option": (fields(finetune='{"epochs": 1, "rm_rf": true}'), 422, "invalid_spec"),
    "finetune negative epochs": (fields(finetune='{"epochs": -1}'), 422, "invalid_spec"),
    "finetune not an object": (fields(finetune="[1, 2]"), 422, "invalid_spec"),
    "channel step zero": (fields(channel_step="0"), 422, "invalid_spec"),
    "channel step too big": (fields(channel_step="65"), 422, "invalid_spec"),
    "channel step not a number": (fields(channel_step="eight"), 422, "invalid_spec"),
    "unknown export format": (fields(exports="onnx,tflite"), 422, "invalid_spec"),
    "unknown form field": (fields(owner="mallory"), 422, "unknown_field"),
    "a text field sent as a file": (lambda f: {"files": {"arch": ("arch.txt", b"resnet20")}, "arch": None}, 422, "unexpected_file"),
    "text field over the limit": (fields(criterion="x" * 70_000), 413, "field_too_large"),
    "upload over the limit": (lambda f: {"files": {"weights": ("w.safetensors", bytes(5 << 20))}}, 413, "too_large"),
    # issue 20: what a file becomes, checked before it is built
    "npz declaring 60x4096x4096 images": (data_file(_npz_tar((60, 4096, 4096), bytes(4096)), "data.tar"), 422, "unsafe_input"),
    "npz of zeros compressed 1000:1": (data_file(_npz_tar((400, 32, 32, 3), bytes(400 * 3072)), "data.tar"), 422, "unsafe_input"),
    "onnx making a 250M-element tensor": (onnx_file(_onnx_with_a_huge_constant(250_000_000)), 422, "unsafe_input"),
    "architecture over the parameter cap": (fields(arch="vit_h_14"), 422, "unsafe_input"),
    # issue 20: upper bounds, finite floats, strict integers in the job spec
    "lr infinite": (fields(finetune='{"epochs": 1, "lr": Infinity}'), 422, "invalid_spec"),
    "lr over 10": (fields(finetune='{"epochs": 1, "lr": 11}'), 422, "invalid_spec"),
    "epochs a fraction": (fields(finetune='{"epochs": 1.5}'), 422, "invalid_spec"),
    "epochs 100000": (fields(finetune='{"epochs": 100000}'), 422, "invalid_spec"),
    "fine-tune batch 1e9": (fields(finetune='{"epochs": 1, "batch_size": 1000000000}'), 422, "invalid_spec"),
    "fine-tune batch negative": (fields(finetune='{"epochs": 1, "batch_size": -64}'), 422, "invalid_spec"),
    "fine-tune batch a float": (fields(finetune='{"epochs": 1, "batch_size": 64.0}'), 422, "invalid_spec"),
    "steps per epoch 2e6": (fields(finetune='{"epochs": 1, "max_steps_per_epoch": 2000000}'), 422, "invalid_spec"),
    "steps per epoch a fraction": (fields(finetune='{"epochs": 1, "max_steps_per_epoch": 2.5}'), 422, "invalid_spec"),
    "latency batch 1000000": (fields(budget='{"latency": 0.5, "batch_size": 1000000}'), 422, "bad_budget"),
    "latency batch a float": (fields(budget='{"latency": 0.5, "batch_size": 8.5}'), 422, "bad_budget"),
    "latency_ms infinite": (fields(budget='{"latency_ms": Infinity}'), 422, "bad_budget"),
    "seed 2^31": (fields(seed=str(2**31)), 422, "invalid_spec"),
    # issue 18: the input spec
    "input size not N or HxW": (fields(input='{"size": "big"}'), 422, "invalid_spec"),
    "input size the net cannot take": (fields(arch="cifar_vgg16_bn", input='{"size": 8}'), 422, "invalid_spec"),
    "mean/std of the wrong length": (fields(arch="resnet18", input='{"mean": [0.5], "std": [0.2]}'), 422, "invalid_spec"),
    "onnx at 32 px asked for 96": (lambda f: {**onnx_file(_tiny_onnx(32, 32))(f), "input": '{"size": 96}'}, 422, "invalid_spec"),
    "onnx with dynamic H/W": (onnx_file(_tiny_onnx("h", "w")), 422, "invalid_spec"),
    "search trials 2001": (fields(method="evolution", search_trials="2001"), 422, "invalid_spec"),
}  # fmt: skip


@pytest.fixture(scope="module")
def client(service) -> Iterator[httpx.Client]:
    with service.client(service.token("mallory")) as c:
        yield c


@pytest.mark.parametrize("case", list(CASES))
def test_bad_submission_is_refused(client, files, case):
    build, status, code = CASES[case]
    args = build(files)
    response = submit(client, args.pop("files", None), **args)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    assert not SENTINEL.exists()


def _multipart(parts: list[tuple[str, str]]) -> tuple[bytes, dict[str, str]]:
    body = "".join(f'--zz\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in parts)
    return (body + "--zz--\r\n").encode(), {"Content-Type": "multipart/form-data; boundary=zz"}


RAW_CASES = {
    "JSON body": (b'{"arch": "resnet20"}', "application/json", 415),
    "urlencoded form": (b"arch=resnet20&budget=%7B%7D", "application/x-www-form-urlencoded", 415),
    "multipart without a boundary": (b"--x--", "multipart/form-data", 400),
    "no content type": (b"arch=resnet20", "", 415),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_wrong_content_types(client, case):
    body, content_type, status = RAW_CASES[case]
    response = client.post("/jobs", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status and response.json()["error"]


def test_duplicate_and_too_many_fields(client):
    body, headers = _multipart([("arch", "resnet20"), ("arch", "resnet56")])
    response = client.post("/jobs", content=body, headers=headers)
    assert response.status_code == 422 and response.json()["error"] == "duplicate_field"
    body, headers = _multipart([(f"f{i}", "x") for i in range(20)])
    response = client.post("/jobs", content=body, headers=headers)
    assert response.status_code == 422 and response.json()["error"] in ("too_many_fields", "unknown_field")


def test_oversized_chunked_upload_without_content_length(client):
    boundary = "chunky"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="weights"; filename="w.safetensors"\r\n\r\n'.encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(80):  # 5 MB in 64 KB chunks, never announced
            yield bytes(64 << 10)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/jobs", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413 and response.json()["error"] == "too_large"


def test_malformed_multipart_and_non_utf8(client):
    ctype = "multipart/form-data; boundary=zz"
    truncated = b'--zz\r\nContent-Disposition: form-data; name="weights"; filename="w.pt"\r\n\r\nabc'
    assert client.post("/jobs", content=truncated, headers={"Content-Type": ctype}).status_code == 400
    latin = b'--zz\r\nContent-Disposition: form-data; name="arch"\r\n\r\n\xff\xfe\r\n--zz--\r\n'
    response = client.post("/jobs", content=latin, headers={"Content-Type": ctype})
    assert response.status_code == 422 and response.json()["error"] == "bad_encoding"


def test_nothing_was_kept_and_the_server_is_healthy(service, client):
    assert httpx.get(f"{service.url}/healthz").json()["status"] == "ok"
    assert client.get("/jobs").json()["count"] == 0
    assert not list((service.data_dir / "uploads").glob("*.partial"))
    assert not SENTINEL.exists()
    good = submit(client, {"weights": ("w.safetensors", _good_weights())}, finetune=TINY_FINETUNE)
    assert good.status_code == 201, good.text
    client.delete(f"/jobs/{good.json()['id']}")


def _good_weights() -> bytes:
    torch.manual_seed(0)
    buf = io.BytesIO()
    state = {k: v.contiguous() for k, v in create_model("resnet20", num_classes=10).state_dict().items()}
    from safetensors.torch import save

    buf.write(save(state))
    return buf.getvalue()
