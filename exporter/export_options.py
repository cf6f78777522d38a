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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["golden_seeds"] = list(self.golden_seeds)
        return d
