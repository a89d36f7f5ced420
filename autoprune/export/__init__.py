"""Export: safetensors + spec.json, ONNX with an onnxruntime check, torch.export, report."""

from autoprune.export.bundle import export_onnx, export_pt2, save_weights, write_json
from autoprune.export.spec import ModelSpec, load_pruned, read_spec

__all__ = ["ModelSpec", "export_onnx", "export_pt2", "load_pruned", "read_spec", "save_weights", "write_json"]
