"""dualrate: export, compile and validate Dual-Rate Diffusion models.

``import dualrate`` is the entry point of the Python API (``dualrate.api``): declare a model
(``DualRateModel`` with inputs bound by role: ``SAMPLE``, ``TIME``, ``TIME_CTX``, ``cond``,
``feature``, ``features``; ``Conditioning``; ``Decoder``), then ``export``, ``compile``,
``sample``, ``validate``. The library lives in ``dualrate.exporter`` (model, spec, sampling
loop, ONNX export), ``dualrate.targets`` (one module per backend) and ``dualrate.validation``
(parity layers, reports); the command line (``dualrate.cli``) is a thin layer over the API.
Names are imported on first use, so ``import dualrate`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from dualrate.exporter.version import __version__

_EXPORTS = {
    "dualrate.api": ("export", "compile", "sample", "validate", "bench", "tune", "open_runner", "sampler_options",
                     "ValidationReport"),
    "dualrate.exporter.model_pair": ("DualRateModel", "Conditioning", "Decoder", "Role", "SAMPLE", "TIME", "TIME_CTX",
                                     "cond", "feature", "features"),
    "dualrate.exporter.errors": ("DualrateError", "BadInputError", "CheckpointError", "SpecError", "BundleError",
                                 "OutputExistsError", "ParityError", "NonFiniteError", "BackendUnavailableError"),
    "dualrate.exporter.bundle": ("Bundle", "open_bundle"),
    "dualrate.exporter.spec": ("Spec",),
    "dualrate.exporter.export_options": ("ExportOptions",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dualrate' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
