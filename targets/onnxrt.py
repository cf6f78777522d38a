"""ONNX Runtime target: optimized graphs cached in the bundle, and an IOBinding runner.

Compile saves each fp32 graph after ORT's *extended* (hardware-independent) graph
optimizations; the runner loads those and lets ORT apply the layout-specific
ones at session creation. An ``int8`` / ``int8-weights`` graph of the precision plan is
quantized by ``ort_quantize`` (static QDQ calibrated on the bundle's own sampler, or int8
weights) and saved as ONNX Runtime's quantizer wrote it. Cached features never leave ORT: the encoder's
outputs are bound as ``OrtValue``s and handed to the denoiser's binding as they
are, so reusing them costs no host copy per step.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dualrate.exporter import int8_calibration
from dualrate.exporter.bundle import Bundle
from dualrate.exporter.runner import BaseRunner
from dualrate.exporter.spec import Spec

from . import ort_quantize
from .base import Compiled, Target, runtime_step
from .int8_layers import check_sensitive
from .precision_plan import PrecisionPlan


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
    precisions = ("fp32", "int8", "int8-weights")

    def available(self) -> str | None:
        try:
            _ort()
        except ImportError as exc:
            return f"onnxruntime cannot be imported ({exc}); pip install onnxruntime"
        return None

    def runtime_version(self) -> str:
        return _ort().__version__

    def compile_into(self, bundle: Bundle, plan: PrecisionPlan, out: Path, calibration_samples: int | None = None,
                     calibration_seed: int | None = None, int8_sensitive: str = "int8-weights") -> dict[str, Any]:
        """Each graph at its plan's precision, in graph order (encoder first: an int8 denoiser is calibrated
        on the features of the encoder as compiled here). ``calibration_*``: ``int8_calibration``;
        ``int8_sensitive``: ``ort_quantize.quantize_static_qdq``'s ``sensitive``."""
        check_sensitive(int8_sensitive)
        quantized: dict[str, dict[str, Any]] = {}
        calibration = int8_calibration.options_from(calibration_samples, calibration_seed)
        with tempfile.TemporaryDirectory() as scratch:
            for graph in bundle.graph_names():
                precision = plan.for_graph(graph)
                if precision == "fp32":
                    self._save_optimized(bundle, graph, out / f"{graph}.onnx")
                    continue
                # quantize after ORT's own pre-processing only (folding, shape inference): the QDQ graph stays
                # portable, and ORT fuses it into integer kernels when the runner loads it
                folded = Path(scratch) / f"{graph}.onnx"
                gio = bundle.spec.model.graphs()[graph]
                with runtime_step("ONNX Runtime", graph, f"quantize ({precision})", (ValueError, RuntimeError,
                                                                                      KeyError)):
                    ort_quantize.preprocess(bundle.graph(graph), folded)
                    # graphs compiled so far as compiled (an int8 encoder's features), the rest as exported
                    feeds = ort_quantize.calibration_feeds(bundle, graph, {
                        g: out / f"{g}.onnx" if (out / f"{g}.onnx").exists() else bundle.graph(g)
                        for g in bundle.graph_names()}, calibration)
                    if precision == "int8-weights":
                        quantized[graph] = ort_quantize.quantize_weights(folded, out / f"{graph}.onnx", feeds, graph)
                    else:
                        quantized[graph] = ort_quantize.quantize_static_qdq(folded, out / f"{graph}.onnx", feeds,
                                                                            gio, graph, int8_sensitive)
                    quantized[graph]["sensitivity"] = ort_quantize.sensitivity(folded, out / f"{graph}.onnx", feeds)
        record: dict[str, Any] = {"graph_precisions": plan.as_dict(), "device": "cpu",
                                  "providers": ["CPUExecutionProvider"],
                                  "options": {"saved_optimization_level": "extended", "run_optimization_level": "all"}}
        if quantized:
            record["options"]["quantized_graphs"] = "quant_pre_process (folding, shape inference), then QDQ"
            record["quantization"] = quantized
            record["calibration"] = calibration.record("ONNX Runtime")
        return record

    def _save_optimized(self, bundle: Bundle, graph: str, dest: Path) -> None:
        """Save ``graph`` after ORT's extended (hardware-independent) optimizations."""
        ort = _ort()
        errors, machine = ort_errors()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(dest)
        if (bundle.path / f"{graph}.onnx.data").exists():
            # large weights stay external in the optimized copy as well
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                        f"{graph}.onnx.data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                        "1024")
        with runtime_step("ONNX Runtime", graph, "load", errors, unavailable=machine):
            ort.InferenceSession(str(bundle.graph(graph)), so, providers=["CPUExecutionProvider"])

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
