"""Which conv/linear layers of a graph int8 leaves in float, found from the graph's structure.

The same rule serves every backend (ONNX Runtime reads ONNX nodes, OpenVINO its IR ops; each
backend turns its graph into ``Layer``s). A layer is sensitive when it is

* computed from the time and conditioning inputs alone: the time embedding and the FiLM / adaLN
  projections. They see one value per sample, cost little, and a rounding error there shifts a
  whole feature map at every step;
* the first conv/linear on the sample path (it sees the raw noisy sample, whose range changes by
  orders of magnitude over the trajectory);
* the last conv/linear before each graph output (its error goes straight into the prediction or
  into the cached features every later step reuses).

Names are never matched: an exporter's naming scheme is not a contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from dualrate.exporter.errors import BadInputError
from dualrate.exporter.spec import COND_PREFIX, ROLE_TIME, ROLE_TIME_CTX, GraphIO

# what the sensitive layers get in an int8 graph: int8 weights with float activations (default), or nothing
SENSITIVE_CHOICES = ("int8-weights", "float")
EMBEDDING = "time/conditioning embedding or FiLM projection"
FIRST = "first conv/linear"
LAST = "last conv/linear before output {}"


def check_sensitive(choice: str) -> None:
    """Refuse an ``int8_sensitive`` compile option outside ``SENSITIVE_CHOICES`` (bad input, exit 2)."""
    if choice not in SENSITIVE_CHOICES:
        raise BadInputError(f"int8_sensitive {choice!r}: choose {' or '.join(SENSITIVE_CHOICES)}")


@dataclass(frozen=True)
class Layer:
    """One node in topological order: its tensors (constants left out) and whether it is a conv/linear
    with a constant weight."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weighted: bool


def sensitive_layers(layers: Sequence[Layer], conditioning_inputs: Iterable[str],
                     graph_outputs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Layer name -> why it stays float. ``graph_outputs``: (output name, tensor) pairs."""
    from_cond = set(conditioning_inputs)
    for layer in layers:                      # tensors computed from time / conditioning (and constants) alone
        if layer.inputs and all(t in from_cond for t in layer.inputs):
            from_cond.update(layer.outputs)
    kept: dict[str, str] = {}
    weighted = [l for l in layers if l.weighted]
    for layer in weighted:
        if layer.outputs and layer.outputs[0] in from_cond:
            kept[layer.name] = EMBEDDING
    sample_path = [l for l in weighted if l.name not in kept]
    if sample_path:
        kept[sample_path[0].name] = FIRST
    producer = {t: i for i, l in enumerate(layers) for t in l.outputs}
    on_path = {l.name for l in sample_path}
    for out_name, tensor in graph_outputs:
        seen: set[str] = set()
        stack, best = [tensor], -1
        while stack:                          # the latest conv/linear among the output's ancestors
            t = stack.pop()
            if t in seen or t not in producer:
                continue
            seen.add(t)
            i = producer[t]
            if layers[i].name in on_path:
                best = max(best, i)
            stack.extend(layers[i].inputs)
        if best >= 0:
            kept.setdefault(layers[best].name, LAST.format(out_name))
    return kept


def conditioning_inputs(gio: GraphIO) -> list[str]:
    """The graph inputs the spec binds to time, time_ctx or a conditioning role, whatever their names."""
    return [t.name for t in gio.inputs if t.feeds in (ROLE_TIME, ROLE_TIME_CTX) or t.feeds.startswith(COND_PREFIX)]
