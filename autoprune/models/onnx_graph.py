"""ONNX intake: a user's ``.onnx`` classifier → a torch module (via onnx2torch) that autoprune can prune.

``onnx.load`` parses protobuf (no pickle, no code), but an uploaded graph is still hostile until
checked: files over ``max_bytes`` are refused before they are read, and so are graphs that keep
tensors in *external data* files (a path inside the model could point anywhere, at any size).
The graph must pass ``onnx.checker`` and take one NCHW float tensor with static C, H, W and
return one ``(N, classes)`` tensor.

Exporters write graphs onnx2torch 1.5.15 cannot read as they are, so a few rewrites that keep
the graph's meaning run first: ``Constant`` nodes and ``Identity`` copies of initializers become
initializers (the legacy exporter feeds shared conv biases through ``Identity``); a graph above
opset 17 whose ops onnx2torch lacks at that opset (the torch.export-based exporter's opset-18
``ReduceMean``) is lowered to opset 17 with ONNX's version converter; a ``Reshape`` to
``(N, C·H·W)`` by a constant shape becomes ``Flatten(axis=1)``, whose output follows the channel
count, so the channels feeding the classifier stay prunable; and ``allowzero=1`` is dropped from
constant shapes with no zero (where it changes nothing). Ops that still have no converter are
all named in one :class:`ModelIntakeError`, with the opset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

import onnx
import onnx2torch
import torch
from onnx import numpy_helper, shape_inference, version_converter
from onnx2torch.node_converters import get_converter
from torch import nn

from autoprune.errors import ModelIntakeError, UnsafeInputError

MAX_ONNX_BYTES = (2 << 30) - 1  # protobuf cannot hold a larger message anyway
MAX_GRAPH_ELEMENTS = 1 << 30  # any one tensor of a graph, per sample (the service sets its own)
SIZED_BY_DATA = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "RandomNormal",
                           "RandomUniform", "EyeLike", "OneHot", "Pad"})  # fmt: skip
CONVERTER_OPSET = 17  # onnx2torch 1.5.15 lacks e.g. the opset-18 Reduce* ops (axes as an input)
DEFAULT_DOMAINS = ("", "ai.onnx")
MATCH_TOLERANCE = 1e-4  # max |torch - onnxruntime|, relative to the largest output (at least 1)
EXPORT_HINT = "export with torch.onnx.export(model, (x,), path, dynamic_shapes=...) (one input, one logits output)"

Signature = tuple[tuple[int, int, int], int]


def describe_onnx(path: str | os.PathLike[str], *, max_bytes: int = MAX_ONNX_BYTES) -> Signature:
    """``((C, H, W), num_classes)`` read from the graph's input and output declarations."""
    return _signature(_load(Path(path), max_bytes))


def input_dims(path: str | os.PathLike[str], *, max_bytes: int = MAX_ONNX_BYTES) -> tuple[int | None, ...]:
    """(C, H, W) of the graph's one image input, ``None`` where a size is dynamic (symbolic)."""
    model = _load(Path(path), max_bytes)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1 or not inputs[0].type.tensor_type.HasField("shape") or len(_dims(inputs[0])) != 4:
        return _signature(model)[0]  # its error says what is wrong with the input
    return tuple(d if isinstance(d, int) and d > 0 else None for d in _dims(inputs[0])[1:])


def check_input_shape(path: str | os.PathLike[str], input_shape: Sequence[int]) -> None:
    """Refuse data whose C, H, W differ from the graph's (its static shapes, Reshapes... assume them)."""
    graph_shape, _ = describe_onnx(path)
    if graph_shape != tuple(input_shape):
        raise ModelIntakeError(
            f"{Path(path).name}: the ONNX graph takes {'x'.join(map(str, graph_shape))} inputs, the data is "
            f"{'x'.join(map(str, input_shape))}; export the model at the data's input size"
        )


def check_graph_size(
    path: str | os.PathLike[str], *, max_elements: int = MAX_GRAPH_ELEMENTS, max_bytes: int = MAX_ONNX_BYTES
) -> None:
    """Refuse a graph any of whose tensors would hold more than ``max_elements`` for one sample,
    from shape inference alone (nothing runs): a tiny file can otherwise ask onnxruntime and
    torch for gigabytes (``ConstantOfShape([600000000])``). Tensors that ops such as
    ``ConstantOfShape``, ``Expand`` or ``Tile`` size from data must have inferable shapes."""
    model = _load(Path(path), max_bytes)
    _check_sizes(model, Path(path).name, max_elements)


def _check_sizes(model: onnx.ModelProto, name: str, max_elements: int) -> None:
    model = _copy(model)
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in initializers and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].Clear()
            value.type.tensor_type.shape.dim[0].dim_value = 1  # one sample
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference failed: the graph is inconsistent
        raise ModelIntakeError(f"{name}: ONNX shape inference failed: {str(exc)[:300]}") from exc
    graph = inferred.graph
    shapes = {v.name: v for v in (*graph.value_info, *graph.output)}
    for node in graph.node:
        for output in node.output:
            value = shapes.get(output)
            dims = _dims(value) if value is not None and value.type.tensor_type.HasField("shape") else None
            if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
                elements = math.prod(int(d) for d in dims)
                if elements > max_elements:
                    raise UnsafeInputError(
                        f"{name}: {node.op_type} node {node.name or output!r} makes a tensor of {elements:,} "
                        f"elements per sample, over the limit of {max_elements:,}"
                    )
            elif node.op_type in SIZED_BY_DATA and node.domain in DEFAULT_DOMAINS:
                raise UnsafeInputError(
                    f"{name}: the size of {node.op_type} node {node.name or output!r}'s output cannot be inferred "
                    "before running the graph; such graphs are refused"
                )


def convert_onnx(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = MAX_ONNX_BYTES,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> nn.Module:
    """The graph as a torch module (eval mode) carrying the graph's initializers as its weights.

    ``num_classes`` / ``in_channels`` are checks, not options: the graph fixes them, and a value
    that differs from the graph's is refused.
    """
    path = Path(path)
    model = _load(path, max_bytes)
    (channels, height, width), classes = _signature(model)
    _check_sizes(model, path.name, MAX_GRAPH_ELEMENTS)
    for what, wanted, actual in (("classes", num_classes, classes), ("input channels", in_channels, channels)):
        if wanted is not None and wanted != actual:
            raise ModelIntakeError(f"{path.name}: the ONNX graph has {actual} {what}, the data needs {wanted}")
    model = _lower_if_needed(_fold_constants(model), path.name)
    model = _simplify_reshapes(model)
    try:
        module = onnx2torch.convert(model)
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... per op
        opset = _opset(model)
        raise ModelIntakeError(f"{path.name}: onnx2torch could not convert the graph (opset {opset}): {exc}") from exc
    _check_against_onnxruntime(module.eval(), path, (channels, height, width), classes)
    return module


def _load(path: Path, max_bytes: int) -> onnx.ModelProto:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelIntakeError(f"cannot read ONNX file {path}: {exc.strerror}") from exc
    if not path.is_file():
        raise ModelIntakeError(f"{path} is not a file")
    if size > max_bytes:
        raise UnsafeInputError(f"{path.name}: {size} bytes is over the {max_bytes}-byte limit for ONNX graphs")
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelIntakeError(f"{path.name} is not an ONNX model: {exc}") from exc
    external = [t.name for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data]
    if external:
        raise UnsafeInputError(
            f"{path.name}: {len(external)} tensors (e.g. {external[0]!r}) are stored in external data files, "
            "which are refused; save the model as one file (torch.onnx.export(..., external_data=False))"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError, or a C++ error on odd protos
        raise ModelIntakeError(f"{path.name} is not a valid ONNX graph: {exc}") from exc
    return model


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor the model holds: initializers and tensor attributes, in subgraphs and functions too."""
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attr in nodes.pop().attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            graphs.extend([attr.g] if attr.HasField("g") else [])
            graphs.extend(attr.graphs)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Static sizes as ints, symbolic or unknown ones as their name ('' when unnamed)."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _signature(model: onnx.ModelProto) -> Signature:
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelIntakeError(
            f"the ONNX graph has {len(inputs)} inputs and {len(graph.output)} outputs; autoprune takes image "
            f"classifiers with one input and one output: {EXPORT_HINT}"
        )
    (x,), (y,) = inputs, graph.output
    for value, rank in ((x, 4), (y, 2)):
        if not value.type.HasField("tensor_type") or value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelIntakeError(f"ONNX graph {value.name!r} must be a float32 tensor")
        if not value.type.tensor_type.HasField("shape") or len(_dims(value)) != rank:
            raise ModelIntakeError(
                f"ONNX graph {value.name!r} must have rank {rank} ({'NCHW' if rank == 4 else 'N, classes'}), "
                f"got shape {_dims(value) if value.type.tensor_type.HasField('shape') else 'unknown'}"
            )
    chw, classes = _dims(x)[1:], _dims(y)[1]
    if not all(isinstance(d, int) and d > 0 for d in chw):
        raise ModelIntakeError(f"ONNX graph input {x.name!r} must have static C, H, W; got {_dims(x)}")
    if not isinstance(classes, int) or classes < 1:
        raise ModelIntakeError(f"ONNX graph output {y.name!r} must have a static number of classes; got {_dims(y)}")
    c, h, w = (int(d) for d in chw)
    return (c, h, w), classes


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0)


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Constant`` nodes and ``Identity`` copies of initializers → initializers (onnx2torch wants weights there)."""
    model = _copy(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:
        tensor = None
        if node.domain in DEFAULT_DOMAINS and node.op_type == "Constant":
            tensor = next((a.t for a in node.attribute if a.name == "value"), None)
        elif node.domain in DEFAULT_DOMAINS and node.op_type == "Identity" and node.input[0] in initializers:
            tensor = initializers[node.input[0]]
        if tensor is None:
            kept.append(node)
            continue
        folded = onnx.TensorProto()
        folded.CopyFrom(tensor)
        folded.name = node.output[0]
        graph.initializer.append(folded)
        initializers[folded.name] = folded
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _unsupported(model: onnx.ModelProto) -> list[str]:
    """The op types (``domain::Op`` outside the default domain) onnx2torch has no converter for."""
    opsets = {o.domain: o.version for o in model.opset_import}
    missing = set()
    for node in model.graph.node:
        opset = opsets.get(node.domain, opsets.get("ai.onnx") if node.domain == "" else None)
        try:
            if opset is None:
                raise NotImplementedError
            get_converter(domain=node.domain, operation_type=node.op_type, version=opset)
        except NotImplementedError:
            missing.add(f"{node.domain}::{node.op_type}" if node.domain not in DEFAULT_DOMAINS else node.op_type)
    return sorted(missing)


def _lower_if_needed(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    missing = _unsupported(model)
    if not missing:
        return model
    opset = _opset(model)
    if opset > CONVERTER_OPSET:
        try:
            lowered = version_converter.convert_version(model, CONVERTER_OPSET)
        except Exception:  # the converter has no adapter for some op: report the ops below
            lowered = None
        if lowered is not None and not _unsupported(lowered):
            return lowered
    raise ModelIntakeError(
        f"{name}: onnx2torch {metadata.version('onnx2torch')} cannot convert these op types (opset {opset}): "
        f"{', '.join(missing)}; re-export without them (see onnx2torch's list of supported operators)"
    )


def _simplify_reshapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reshape to ``(N, C·H·W)`` → ``Flatten(axis=1)``; ``allowzero=1`` off where the shape has no 0."""
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # leave the graph as it is: onnx2torch reports what it cannot handle
        return model
    graph = model.graph
    shapes = {v.name: _dims(v) for v in (*graph.value_info, *graph.input, *graph.output)}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.domain not in DEFAULT_DOMAINS or node.op_type != "Reshape" or node.input[1] not in constants:
            continue
        target = [int(v) for v in constants[node.input[1]].reshape(-1)]
        allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
        if _is_flatten(shapes.get(node.input[0], []), target, allowzero):
            node.CopyFrom(onnx.helper.make_node("Flatten", [node.input[0]], list(node.output), name=node.name, axis=1))
        elif allowzero and 0 not in target:
            kept = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return model


def _is_flatten(source: list[int | str], target: list[int], allowzero: int) -> bool:
    """Whether reshaping ``source`` to ``target`` is exactly ``flatten(1)`` for any batch size."""
    features = source[1:]
    if len(source) < 2 or len(target) != 2 or not all(isinstance(d, int) and d > 0 for d in features):
        return False
    width = math.prod(int(d) for d in features)
    batch_ok = target[0] == -1 or (target[0] == 0 and not allowzero)  # 0 copies the batch size
    return batch_ok and target[1] in (width, -1) and target != [-1, -1]


def _check_against_onnxruntime(module: nn.Module, path: Path, chw: tuple[int, int, int], classes: int) -> None:
    """The converted module must run a batch of 2 (graphs exported with a fixed batch fail here) and
    give onnxruntime's output on the uploaded file: every rewrite and op conversion is checked."""
    from autoprune.measure.latency import onnx_session

    x = torch.randn(2, *chw, generator=torch.Generator().manual_seed(0))
    try:
        session = onnx_session(path, threads=1)
        expected = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            got = module(x)
    except Exception as exc:  # onnxruntime's and the converted ops' errors alike
        why = str(exc)[:500]
        raise ModelIntakeError(f"{path.name}: the graph does not run on a batch of 2 ({why}); {EXPORT_HINT}") from exc
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or tuple(got.shape) != (2, classes):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise ModelIntakeError(f"{path.name}: the converted graph returns {shape} for a batch of 2, not (2, {classes})")
    diff = float((got - expected).abs().max())
    if diff > MATCH_TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ModelIntakeError(f"{path.name}: the converted graph differs from onnxruntime's output by {diff:.3g}")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
