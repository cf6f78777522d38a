"""Per-graph precision plans: which precision each graph of a bundle is compiled at.

A plan is written either as one precision for every graph (``int8``) or graph by graph
(``encoder=int8,denoiser=fp32``; a graph the text does not name stays ``fp32``). The encoder runs
at a few steps and the denoiser at every step on features that grow stale, so the best precision
differs per graph: the plan is what ``dualrate compile --precision``, the Python API, the compile
record, the reports and ``dualrate tune`` pass around.

``PrecisionPlan.name`` is the plan's canonical text, used in the compile cache folder
(``targets/<backend>-<name>``) and in records: the precision itself when uniform
(``int8``), else ``encoder-int8.denoiser-fp32`` in the bundle's graph order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from dualrate.exporter.errors import BadInputError

# Every precision some backend compiles to. ``int8``: weights and activations (static, calibrated on
# the two-rate sampler); ``int8-weights``: weights only; ``palettize<N>``: N-bit k-means weight
# palettes (Core ML).
FLOAT_PRECISIONS = ("fp32", "bf16", "fp16")
INT8_PRECISIONS = ("int8", "int8-weights")
PALETTE_PRECISIONS = ("palettize4", "palettize6", "palettize8")
ALL_PRECISIONS = FLOAT_PRECISIONS + INT8_PRECISIONS + PALETTE_PRECISIONS
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True)
class PrecisionPlan:
    """(graph, precision) for every graph of a bundle, in the bundle's graph order."""

    graphs: tuple[tuple[str, str], ...]

    def for_graph(self, graph: str) -> str:
        for g, p in self.graphs:
            if g == graph:
                return p
        raise KeyError(graph)

    @property
    def precisions(self) -> tuple[str, ...]:
        """The distinct precisions of the plan, in graph order."""
        return tuple(dict.fromkeys(p for _, p in self.graphs))

    @property
    def uniform(self) -> str | None:
        """The precision of every graph, or None for a mixed plan."""
        ps = self.precisions
        return ps[0] if len(ps) == 1 else None

    @property
    def name(self) -> str:
        return self.uniform or ".".join(f"{g}-{p}" for g, p in self.graphs)

    @property
    def text(self) -> str:
        """What a user writes for it (``encoder=int8,denoiser=fp32``, or ``int8``)."""
        return self.uniform or ",".join(f"{g}={p}" for g, p in self.graphs)

    def as_dict(self) -> dict[str, str]:
        return dict(self.graphs)

    def __str__(self) -> str:
        return self.text


def parse_plan(text: "str | PrecisionPlan | dict[str, str]", graphs: Sequence[str],
               allowed: Iterable[str] | None = None, target: str | None = None) -> PrecisionPlan:
    """The plan ``text`` over the bundle's ``graphs``. ``allowed`` (a backend's precisions) limits
    what each graph may take; ``target`` names the backend in the message. A dict maps graph to
    precision. Bad plans raise ``BadInputError`` with one line saying what to write instead."""
    graphs = tuple(graphs)
    allowed = tuple(allowed) if allowed is not None else ALL_PRECISIONS
    where = f"target {target} " if target else ""
    if isinstance(text, PrecisionPlan):
        text = text.as_dict()
    if isinstance(text, dict):
        pairs = [(str(g), str(p)) for g, p in text.items()]
        shown = ",".join(f"{g}={p}" for g, p in pairs)
    else:
        shown = str(text).strip()
        if not shown:
            raise BadInputError(f"empty precision; write one of {', '.join(allowed)}, or a plan such as "
                                f"{_example(graphs)}")
        if "=" not in shown and "," not in shown:
            _known(shown, allowed, where, "every graph")
            return PrecisionPlan(tuple((g, shown) for g in graphs))
        pairs = []
        for part in shown.split(","):
            graph, eq, precision = (s.strip() for s in part.partition("="))
            if not eq or not graph or not precision:
                raise BadInputError(f"precision plan {shown!r}: {part.strip()!r} is not GRAPH=PRECISION; write "
                                    f"for example {_example(graphs)}")
            pairs.append((graph, precision))
    chosen: dict[str, str] = {}
    for graph, precision in pairs:
        if graph not in graphs:
            raise BadInputError(f"precision plan {shown!r} names graph {graph!r}, but the bundle's graphs are "
                                f"{', '.join(graphs)}")
        if graph in chosen:
            raise BadInputError(f"precision plan {shown!r} names graph {graph!r} twice")
        _known(precision, allowed, where, f"graph {graph}")
        chosen[graph] = precision
    if DEFAULT_PRECISION not in allowed and len(chosen) < len(graphs):
        missing = [g for g in graphs if g not in chosen]
        raise BadInputError(f"precision plan {shown!r} leaves {', '.join(missing)} at fp32, which {where or 'it '}"
                            f"does not support; name every graph")
    return PrecisionPlan(tuple((g, chosen.get(g, DEFAULT_PRECISION)) for g in graphs))


def _known(precision: str, allowed: tuple[str, ...], where: str, what: str) -> None:
    if precision not in allowed:
        kind = "unknown precision" if precision not in ALL_PRECISIONS else "precision"
        raise BadInputError(f"{where}supports precision {', '.join(allowed)}; {kind} {precision!r} was requested "
                            f"for {what}" if where else
                            f"{kind} {precision!r} for {what}; choose one of {', '.join(allowed)}")


def _example(graphs: Sequence[str]) -> str:
    names = list(graphs)[:2] or ["encoder", "denoiser"]
    return ",".join(f"{g}={p}" for g, p in zip(names, ("int8", "fp32")))


__all__ = ["ALL_PRECISIONS", "DEFAULT_PRECISION", "FLOAT_PRECISIONS", "INT8_PRECISIONS", "PALETTE_PRECISIONS",
           "PrecisionPlan", "parse_plan"]
