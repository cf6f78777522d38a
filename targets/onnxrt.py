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
from typing import Any, Mapping

import numpy as np

from dualrate.exporter.bundle import Bundle
from dualrate.exporter.runner import BaseRunner
from dualrate.exporter.spec import Spec

from .base import Compiled, Target, runtime_step


def _ort():
    import onnxruntime
    return onnxruntime


def ort_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(what ONNX Runtime raises about a model, what it raises when this machine cannot run it):
    its pybind exception classes (plain ``Exception`` subclasses) and the Python-side ones."""
    state = _ort().capi.onnxruntime_pybind11_state
    every = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    machine = tuple(getattr(state, n) for n in ("EPFail", "DeviceReset") if hasattr(state, n))
    return every + (RuntimeError, ValueError), machine


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

    def compile_into(self, bundle: Bundle, precision: str, out: Path) -> dict[str, Any]:
        ort = _ort()
        errors, machine = ort_errors()
        for graph in bundle.graph_names():
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = str(out / f"{graph}.onnx")
            if (bundle.path / f"{graph}.onnx.data").exists():
                # large weights stay external in the optimized copy as well
                so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                            f"{graph}.onnx.data")
                so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                            "1024")
            with runtime_step("ONNX Runtime", graph, "load", errors, unavailable=machine):
                ort.InferenceSession(str(bundle.graph(graph)), so, providers=["CPUExecutionProvider"])
        return {"effective_precision": "fp32", "device": "cpu", "providers": ["CPUExecutionProvider"],
                "options": {"saved_optimization_level": "extended", "run_optimization_level": "all"}}

    def open_runner(self, bundle: Bundle, compiled: Compiled, threads: int = 0, spin: bool = True) -> "OrtRunner":
        """``spin=False``: idle pool threads sleep instead of spinning (the export's parity check, which
        is not timed: on a busy machine a spinning pool starves itself; same results either way)."""
        return OrtRunner(bundle.spec, {g: compiled.path / f"{g}.onnx" for g in bundle.graph_names()}, threads=threads,
                         spin=spin)


class OrtRunner(BaseRunner):
    """The runner contract over one ORT session per graph; features stay as ``OrtValue``s between steps."""

    name = "onnxruntime"

    def __init__(self, spec: Spec, graphs: dict[str, Path], threads: int = 0, spin: bool = True):
        super().__init__(spec)
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or (os.cpu_count() or 1)
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        errors, machine = ort_errors()
        self._sessions = {}
        for g, p in graphs.items():
            with runtime_step("ONNX Runtime", g, "load the compiled copy of", errors, unavailable=machine):
                self._sessions[g] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        self.runtime_errors = errors

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        session = self._sessions[graph]
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)   # cached features: no host round trip
        names = [o.name for o in self.graphs[graph].outputs]
        for name in names:
            binding.bind_output(name, "cpu")              # ORT allocates; for the encoder the OrtValues are the cache
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs()))

    def to_numpy(self, value: Any) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()


TARGET = OrtTarget()
