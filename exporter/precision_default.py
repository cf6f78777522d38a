"""A bundle's default precision per target: the plan ``dualrate tune`` chose, else fp32.

``dualrate tune -o NEW_BUNDLE`` exports the chosen sampler as a new bundle and records the chosen
precision plan in its manifest (``export_options.precision_plan``: target -> plan text, inside the
hashed manifest, so it cannot change without the bundle failing verification). ``compile``,
``sample``, ``validate`` and ``bench`` of that bundle then run the plan on that target when no
precision is given; an explicit precision always wins, and other targets stay at fp32.
"""

from __future__ import annotations

from typing import Any

DEFAULT = "fp32"


def recorded_plan(bundle: Any, target: str) -> str | None:
    """The plan text the bundle's manifest records for ``target``, or None."""
    plans = (bundle.manifest.get("export_options") or {}).get("precision_plan") or {}
    value = plans.get(target) if isinstance(plans, dict) else None
    return str(value) if value else None


def resolve_precision(bundle: Any, target: str, precision: str | None) -> str:
    """``precision`` when given, else the bundle's recorded plan for ``target``, else fp32."""
    if precision is not None:
        return precision
    return recorded_plan(bundle, target) or DEFAULT


__all__ = ["DEFAULT", "recorded_plan", "resolve_precision"]
