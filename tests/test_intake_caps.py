"""What an input becomes is bounded before it is built (issue 20, case 2): npz arrays by their
headers and zip directory, ONNX graphs by shape inference, architectures by parameters and MACs
on the meta device; and the validator process itself by a memory and a CPU-time cap."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from api.errors import ApiError
from api.intake import ProcessLimits, check_model_size
from api.validator import Validator
from autoprune.data import DataLimits, load_data
from autoprune.errors import UnsafeInputError
from autoprune.models.onnx_graph import check_graph_size

MiB = 1 << 20


def npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def npz_dir(tmp_path: Path, train_x: bytes, x_shape: tuple[int, ...], n: int) -> Path:
    labels = np.zeros(n, np.int64).tobytes()
    write_npz(
        tmp_path / "train.npz", {"x.npy": npy_header(x_shape) + train_x, "y.npy": npy_header((n,), "<i8") + labels}
    )
    small = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "test.npz", x=small, y=np.zeros(4, np.int64))
    return tmp_path


def test_npz_declaring_a_gigabyte_of_images_is_refused_before_reading(tmp_path):
    # the case: 60 x 4096 x 4096 uint8 behind a small file (here the body is not even there)
    directory = npz_dir(tmp_path, b"\0" * 1024, (60, 4096, 4096), 60)
    start = time.monotonic()
    with pytest.raises(UnsafeInputError, match="bytes of images"):
        load_data(f"npz:{directory}", limits=DataLimits(max_array_bytes=512 * MiB))
    assert time.monotonic() - start < 2


def test_npz_compressed_past_the_archive_ratio_is_refused(tmp_path):
    n = 400  # 1.2 MB of zeros, which deflate a thousandfold
    directory = npz_dir(tmp_path, bytes(n * 32 * 32 * 3), (n, 32, 32, 3), n)
    with pytest.raises(UnsafeInputError, match="compressed"):
        load_data(f"npz:{directory}")


def test_npz_member_bigger_than_its_header_is_refused(tmp_path):
    directory = npz_dir(tmp_path, bytes(4 * 8 * 8 * 3) + np.random.bytes(2 * MiB), (4, 8, 8, 3), 4)
    with pytest.raises(UnsafeInputError, match="more than its header"):
        load_data(f"npz:{directory}")


def test_an_ordinary_npz_dataset_still_loads(tmp_path):
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "train.npz", x=rng.integers(0, 255, (600, 16, 16, 3), dtype=np.uint8),
                        y=rng.integers(0, 3, 600))  # fmt: skip
    np.savez_compressed(tmp_path / "test.npz", x=rng.integers(0, 255, (50, 16, 16, 3), dtype=np.uint8),
                        y=rng.integers(0, 3, 50))  # fmt: skip
    data = load_data(f"npz:{tmp_path}", limits=DataLimits(max_array_bytes=MiB))
    assert tuple(data.input_shape) == (3, 16, 16)


def classifier_with_a_constant(path: Path, elements: int, *, from_input: bool = False) -> Path:
    """x (n,3,8,8) → GAP → flatten → y (n,3), plus ``ConstantOfShape([elements]) → ReduceSum → ×0 → +y``
    (the issue's 123 KB graph that asked for 2.4 GB); ``from_input``: the shape comes from the data."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    inits = [numpy_helper.from_array(np.array([elements], np.int64), "shape"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]  # fmt: skip
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"])]
    if from_input:  # a shape computed from the input's values: not inferable
        nodes += [helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
                  helper.make_node("Cast", ["mx"], ["mi"], to=TensorProto.INT64),
                  helper.make_node("Reshape", ["mi", "one"], ["shape2"])]  # fmt: skip
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    nodes += [helper.make_node("ConstantOfShape", ["shape2" if from_input else "shape"], ["big"]),
              helper.make_node("ReduceSum", ["big"], ["s"], keepdims=1),
              helper.make_node("Mul", ["s", "zero"], ["z"]), helper.make_node("Add", ["f", "z"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_graph_making_a_huge_tensor_is_refused_before_running(tmp_path):
    path = classifier_with_a_constant(tmp_path / "m.onnx", 250_000_000)
    with pytest.raises(UnsafeInputError, match="250,000,000 elements"):
        check_graph_size(path, max_elements=200_000_000)
    check_graph_size(classifier_with_a_constant(tmp_path / "ok.onnx", 1000), max_elements=200_000_000)


def test_onnx_tensor_sized_by_the_data_is_refused(tmp_path):
    path = classifier_with_a_constant(tmp_path / "m.onnx", 0, from_input=True)
    with pytest.raises(UnsafeInputError, match="cannot be inferred"):
        check_graph_size(path, max_elements=200_000_000)


LIMITS = {"max_model_params": 150_000_000, "max_model_macs": 50_000_000_000}


def test_architecture_over_the_parameter_cap_is_refused_in_a_moment():
    start = time.monotonic()
    with pytest.raises(UnsafeInputError, match="630,777,610 parameters"):
        check_model_size("vit_h_14", 10, (3, 32, 32), LIMITS)
    assert time.monotonic() - start < 5  # building it for real took 20 s and 3.2 GB


def test_architecture_over_the_macs_cap_at_the_datas_size_is_refused():
    check_model_size("resnet20", 10, (3, 32, 32), LIMITS)
    with pytest.raises(UnsafeInputError, match="MACs per 3x4096x4096 input"):
        check_model_size("resnet20", 10, (3, 4096, 4096), LIMITS)


DIGITS = {
    "spec": {"arch": "resnet20", "budget": {"flops": 0.5}, "method": "global"}, "data": "digits", "weights": None,
    "limits": {"max_archive_members": 10, "max_archive_bytes": MiB, "max_upload_bytes": MiB,
               "max_tensor_elements": 10**8, **LIMITS},
}  # fmt: skip


@pytest.mark.parametrize(
    ("failpoint", "limits", "code"),
    [
        ("validator_alloc", ProcessLimits(memory_bytes=512 * MiB), "memory_limit"),
        ("validator_spin:60", ProcessLimits(cpu_s=1), "cpu_limit"),
    ],
)
def test_validator_process_caps_turn_into_clear_errors(monkeypatch, failpoint, limits, code):
    monkeypatch.setenv("AUTOPRUNE_FAILPOINT", failpoint)
    validator = Validator(30, limits)
    try:
        with pytest.raises(ApiError) as refused:
            validator.check(DIGITS)
        assert (refused.value.status, refused.value.code) == (422, code), refused.value.detail
    finally:
        validator.close()
