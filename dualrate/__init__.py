"""dualrate: export, compile and validate Dual-Rate Diffusion models.

``import dualrate`` is the entry point of the Python API; the library lives in
``dualrate.exporter`` (model, spec, sampling loop, ONNX export), ``dualrate.targets``
(one module per backend) and ``dualrate.validation`` (parity layers, reports). The
command line (``dualrate.cli``) is a thin layer over the same functions.
"""

from dualrate.exporter.version import __version__

__all__ = ["__version__"]
