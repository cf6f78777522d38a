"""What a user chooses at export time besides the sampler: batch axis, opset, external data, golden vectors.

Kept apart from the exporter so options can be built (and bundles run) where PyTorch is not installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .spec_builder import SamplerOptions

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportOptions:
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    static_batch: int | None = None          # None: dynamic batch axis
    opset: int = DEFAULT_OPSET
    external_data: bool | None = None        # None: decide by weight size
    golden_seeds: tuple[int, ...] = (0, 1)
    golden_batch: int = 2
    # target -> precision plan text (``dualrate tune``'s choice): what compile/sample/validate/bench
    # of the bundle use on that target when no precision is given (``exporter.precision_default``)
    precision_plan: dict[str, str] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["golden_seeds"] = list(self.golden_seeds)
        if self.precision_plan is None:        # bundles without one keep their manifest byte for byte
            del d["precision_plan"]
        return d
