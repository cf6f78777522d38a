"""Optional dependencies: PyTorch is needed to export and to recompute references, not to run bundles.

``pip install dualrate`` opens bundles, compiles, samples and validates against golden vectors;
``pip install 'dualrate[export]'`` adds PyTorch for export, ``--reference torch``, init/train and bench's
eager reference. A verb that needs a missing package says which extra installs it (exit 2).
"""

from __future__ import annotations

import importlib.util

from .errors import BadInputError

EXTRAS = {"torch": "export", "onnxscript": "export", "safetensors": "export"}


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> None:
    """BadInputError (exit 2) naming the extra when ``module`` is not installed."""
    if not have(module):
        extra = EXTRAS.get(module, module)
        raise BadInputError(f"{purpose} needs {module}, which is not installed; install it with "
                            f"pip install 'dualrate[{extra}]'")
