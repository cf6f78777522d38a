"""The runner contract every backend implements, and the feeds the sampler builds from roles.

A runner executes the bundle's graphs by input *name*; the sampling loop decides what
each input gets from the role the spec binds to it (``sample``, ``time``, ``time_ctx``,
``cond:<name>``, ``feature:<name>``), so a new conditioning input or a network that
ignores one is a spec change, not a code change::

    encode(feeds)  -> {encoder output name: feature}   # features may stay in the runtime's memory
    denoise(feeds) -> numpy prediction                  # feature inputs get the encoder's handles
    decode(feeds)  -> numpy decoded sample              # only where the spec has a decoder
    features_to_numpy({name: feature}) -> {name: numpy}

``BaseRunner`` gives a backend the shared half (Polygraphy's ``BaseRunner`` shape): the
feeds are checked against the spec's ``GraphIO`` before the backend sees them, and any
error the runtime raises becomes one line naming the graph and the runtime.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np

from .conditioning import np_dtype
from .errors import BadInputError
from .spec import COND_PREFIX, FEATURE_PREFIX, ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, GraphIO, Spec


class Runner(Protocol):
    def encode(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]: ...

    def denoise(self, feeds: Mapping[str, Any]) -> np.ndarray: ...


def graph_feeds(gio: GraphIO, values: Mapping[str, Any]) -> dict[str, Any]:
    """The feeds of one graph call: each input gets the value of its role (time cast to its dtype).

    ``values`` maps roles to values: ``sample``, ``time``/``time_ctx`` (python or numpy scalars
    per row, already ``[rows]``), ``cond:<name>`` and ``feature:<name>``.
    """
    feeds = {}
    for tio in gio.inputs:
        value = values[tio.feeds]
        if tio.feeds in (ROLE_TIME, ROLE_TIME_CTX):
            value = np.asarray(value).astype(np_dtype(tio.dtype))
        feeds[tio.name] = value
    return feeds


def role_values(z: np.ndarray, time: np.ndarray, time_ctx: np.ndarray | None, cond: Mapping[str, np.ndarray],
                features: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Role -> value for one call (see ``graph_feeds``)."""
    values: dict[str, Any] = {ROLE_SAMPLE: z, ROLE_TIME: time}
    if time_ctx is not None:
        values[ROLE_TIME_CTX] = time_ctx
    values.update({COND_PREFIX + k: v for k, v in cond.items()})
    values.update({FEATURE_PREFIX + k: v for k, v in (features or {}).items()})
    return values


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (runtimes write pages of context after it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class BaseRunner:
    """Input checks and error wrapping shared by every backend; subclasses implement ``_run``.

    ``_run(graph, feeds)`` returns the graph's outputs by name (runtime-native values are fine
    for the encoder; the denoiser's and decoder's are turned into numpy here).
    """

    name = "base"
    runtime_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, spec: Spec):
        self.spec = spec
        self.graphs = spec.model.graphs()

    # -- the contract -----------------------------------------------------------
    def encode(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("encoder", feeds)

    def denoise(self, feeds: Mapping[str, Any]) -> np.ndarray:
        out = self._call("denoiser", feeds)
        return self.to_numpy(out[self.graphs["denoiser"].outputs[0].name])

    def decode(self, feeds: Mapping[str, Any]) -> np.ndarray:
        if "decoder" not in self.graphs:
            raise BadInputError("this bundle has no decoder graph")
        out = self._call("decoder", feeds)
        return self.to_numpy(out[self.graphs["decoder"].outputs[0].name])

    def features_to_numpy(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {k: self.to_numpy(v) for k, v in features.items()}

    # -- hooks --------------------------------------------------------------------
    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    # -- shared ---------------------------------------------------------------------
    def _call(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        check_feeds(self.graphs[graph], graph, feeds)
        try:
            return self._run(graph, feeds)
        except self.runtime_errors as exc:
            raise BadInputError(f"{self.name} could not run the {graph} graph: {first_line(exc)}") from None


def check_feeds(gio: GraphIO, graph: str, feeds: Mapping[str, Any]) -> None:
    """Every declared input present with its dtype and fixed sizes; runtime-native values pass as they are."""
    missing = [i.name for i in gio.inputs if i.name not in feeds]
    if missing:
        raise BadInputError(f"{graph}: input(s) {missing} were not fed; the graph takes {[i.name for i in gio.inputs]}")
    extra = sorted(set(feeds) - {i.name for i in gio.inputs})
    if extra:
        raise BadInputError(f"{graph}: fed {extra}, which the graph does not take ({[i.name for i in gio.inputs]})")
    batch = None
    for tio in gio.inputs:
        value = feeds[tio.name]
        if not isinstance(value, np.ndarray):
            continue                    # a feature kept in the runtime's memory: the runtime checks it
        if value.dtype != np_dtype(tio.dtype):
            raise BadInputError(f"{graph}: input {tio.name!r} has dtype {value.dtype}; the graph takes {tio.dtype}")
        want = [None if d == "batch" else d for d in tio.shape]
        if value.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, value.shape)):
            raise BadInputError(f"{graph}: input {tio.name!r} has shape {list(value.shape)}; the graph takes "
                                f"{list(tio.shape)}")
        if tio.shape[0] == "batch":
            if batch is not None and value.shape[0] != batch:
                raise BadInputError(f"{graph}: input {tio.name!r} has {value.shape[0]} rows; other inputs have {batch}")
            batch = value.shape[0]
