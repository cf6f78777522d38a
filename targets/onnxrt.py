"""ONNX Runtime target: optimized graphs cached in the bundle, and an IOBinding runner.

Compile saves each graph after ORT's *extended* (hardware-independent) graph
optimizations; the runner loads those and lets ORT apply the layout-specific
ones at session creation. Cached features never leave ORT: the encoder's
outputs are bound as ``OrtValue``s and handed to the denoiser's binding as they
are, so reusing them costs no host copy per step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dualrate.exporter.bundle import Bundle
from dualrate.exporter.errors import BadInputError

from .base import Compiled, Target


def _ort():
    import onnxruntime
    return onnxruntime


class OrtTarget(Target):
    name = "onnxruntime"
    precisions = ("fp32",)

    def available(self) -> str | None:
        try:
            _ort()
        except ImportError as exc:
            return f"onnxruntime cannot be imported ({exc}); pip install onnxruntime"
        return None

    def runtime_version(self) -> str:
        return _ort().__version__

    def compile_into(self, bundle: Bundle, precision: str, out: Path, **_: Any) -> dict[str, Any]:
        ort = _ort()
        for graph in ("encoder", "denoiser"):
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = str(out / f"{graph}.onnx")
            if (bundle.path / f"{graph}.onnx.data").exists():
                # large weights stay external in the optimized copy as well
                so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                            f"{graph}.onnx.data")
                so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                            "1024")
            ort.InferenceSession(str(bundle.graph(graph)), so, providers=["CPUExecutionProvider"])
        return {"effective_precision": "fp32", "device": "cpu", "providers": ["CPUExecutionProvider"],
                "options": {"saved_optimization_level": "extended", "run_optimization_level": "all"}}

    def open_runner(self, bundle: Bundle, compiled: Compiled, threads: int = 0, **_: Any) -> "OrtRunner":
        return OrtRunner(compiled.path / "encoder.onnx", compiled.path / "denoiser.onnx",
                         [o.name for o in bundle.spec.model.encoder.outputs], threads=threads)


class OrtRunner:
    """Runner protocol over two ORT sessions; features stay as ``OrtValue``s between steps."""

    name = "onnxruntime"

    def __init__(self, encoder: Path, denoiser: Path, feature_names: list[str], threads: int = 0):
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or (os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        self._enc = ort.InferenceSession(str(encoder), so, providers=providers)
        self._den = ort.InferenceSession(str(denoiser), so, providers=providers)
        self._feature_names = feature_names
        self._errors = (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                        ort.capi.onnxruntime_pybind11_state.RuntimeException, ValueError, RuntimeError)

    def encode(self, z: np.ndarray, logsnr: np.ndarray, class_id: np.ndarray) -> list[Any]:
        binding = self._enc.io_binding()
        for name, value in (("z", z), ("logsnr", logsnr), ("class_id", class_id)):
            binding.bind_cpu_input(name, value)
        for name in self._feature_names:
            binding.bind_output(name, "cpu")             # ORT allocates; the OrtValues are the cache
        self._run(self._enc, binding, "encoder")
        return binding.get_outputs()

    def denoise(self, z: np.ndarray, logsnr: np.ndarray, logsnr_ctx: np.ndarray, class_id: np.ndarray,
                features: Any) -> np.ndarray:
        binding = self._den.io_binding()
        for name, value in (("z", z), ("logsnr", logsnr), ("logsnr_ctx", logsnr_ctx), ("class_id", class_id)):
            binding.bind_cpu_input(name, value)
        for name, value in zip(self._feature_names, features):
            if isinstance(value, np.ndarray):             # features given from outside (golden vectors)
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)  # no host round trip for the cached features
        binding.bind_output("prediction", "cpu")
        self._run(self._den, binding, "denoiser")
        return binding.get_outputs()[0].numpy()

    def features_to_numpy(self, features: Any) -> list[np.ndarray]:
        return [v.numpy() for v in features]

    def _run(self, session: Any, binding: Any, graph: str) -> None:
        try:
            session.run_with_iobinding(binding)
        except self._errors as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"onnxruntime rejected the {graph} inputs: {first}") from None


TARGET = OrtTarget()
