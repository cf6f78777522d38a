"""The dual-rate sampling loop, written once against the runner protocol.

A runner is anything with

    encode(z, logsnr, class_id) -> features            # opaque; may stay in the runtime's memory
    denoise(z, logsnr, logsnr_ctx, class_id, features) -> numpy prediction

where ``z`` is float32 ``[B, C, H, W]``, ``logsnr``/``logsnr_ctx`` float32 ``[B]`` and
``class_id`` int64 ``[B]``. The loop reads only the spec's tables:

    for i in 0..N-1:
        for each active branch b (cond; uncond while guidance is active at i):
            if b must refresh (cache rule): feats[b] = encode(z, logsnr[i], class_b); ctx[b] = logsnr[i]
            out_b = denoise(z, logsnr[i], ctx[b], class_b, feats[b])
        x0 = guide(to_x0(out)); optional clip
        z = coef_z[i] z + coef_x0[i] x0 + coef_noise[i] xi[i]

When guidance is active at every step, both branches refresh at the same steps,
so they are run as one batch of 2B (cond rows first): same numbers, half the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .errors import BadInputError, NonFiniteError
from .sampler_tables import to_x0
from .spec import Spec

COND, UNCOND = "cond", "uncond"


class Runner(Protocol):
    def encode(self, z: np.ndarray, logsnr: np.ndarray, class_id: np.ndarray) -> Any: ...

    def denoise(self, z: np.ndarray, logsnr: np.ndarray, logsnr_ctx: np.ndarray, class_id: np.ndarray,
                features: Any) -> np.ndarray: ...


class NoiseSource(Protocol):
    def draw(self, index: int, sample_shape: tuple[int, ...]) -> np.ndarray:
        """float32 ``[B, *sample_shape]``; index 0 = initial noise, i + 1 = noise of step i."""


@dataclass
class ArrayNoise:
    """External noise: the caller supplies every tensor (``initial`` [B,...], ``steps`` [N, B, ...])."""

    initial: np.ndarray
    steps: np.ndarray

    def draw(self, index: int, sample_shape: tuple[int, ...]) -> np.ndarray:
        arr = self.initial if index == 0 else self.steps[index - 1]
        if tuple(arr.shape[1:]) != tuple(sample_shape):
            raise BadInputError(f"external noise draw {index} has shape {tuple(arr.shape)}; expected "
                                f"[batch, {', '.join(map(str, sample_shape))}]")
        return np.asarray(arr, dtype=np.float32)


def spec_noise(spec: Spec, batch: int, seed: int | None = None) -> NoiseSource:
    """The spec's own generator for ``batch`` samples (``seed`` overrides the spec's default)."""
    from .rng import PhiloxNoise

    rng = spec.noise.rng
    if rng.kind == "external":
        raise BadInputError("this spec's noise.rng is 'external': pass the noise tensors explicitly (ArrayNoise)")
    return PhiloxNoise(int(rng.seed if seed is None else seed), batch)


@dataclass
class SampleResult:
    x: np.ndarray                                   # final samples [B, C, H, W]
    refresh_log: dict[str, list[int]]               # steps at which the encoder ran, per branch
    trajectory: list[np.ndarray] = field(default_factory=list)   # z after each step (when recorded)
    x0_estimates: list[np.ndarray] = field(default_factory=list)  # guided, clipped x0 per step (when recorded)


@dataclass(frozen=True)
class GroupCall:
    """One group of branches evaluated together at a step (one encoder and/or denoiser call)."""

    branches: tuple[str, ...]       # (cond,), (uncond,) or (cond, uncond) batched as 2B rows
    refresh: bool                   # the encoder runs before the denoiser
    ctx_step: int                   # the step whose encoder call filled the cache used here


def call_plan(spec: Spec) -> list[list[GroupCall]]:
    """The static schedule of graph calls, per step, in call order.

    Which branches run and when the encoder refreshes depend only on the spec
    (cache rule: refresh at a refresh step, when the group has no cache, or when
    its cache predates the latest refresh step), so the plan is computed once;
    the loop and the validator's teacher-forced layer both walk it.
    """
    s, g = spec.sampler, spec.guidance
    logsnr = spec.sampler.tables.logsnr
    refresh = set(spec.dual_rate.resolved_refresh_steps)
    guided = [g.active(float(logsnr[i])) for i in range(s.num_steps)]
    batched = all(guided)   # both branches live at every step: one 2B batch, identical schedules
    cache_step: dict[tuple[str, ...], int] = {}
    plan, last_refresh = [], 0
    for i in range(s.num_steps):
        if i in refresh:
            last_refresh = i
        if batched:
            groups = [(COND, UNCOND)]
        else:
            groups = [(COND,), (UNCOND,)] if guided[i] else [(COND,)]
        step = []
        for grp in groups:
            fresh = grp not in cache_step or i in refresh or cache_step[grp] < last_refresh
            if fresh:
                cache_step[grp] = i
            step.append(GroupCall(grp, fresh, cache_step[grp]))
        plan.append(step)
    return plan


def group_labels(labels: np.ndarray, null_class: int, branches: tuple[str, ...]) -> np.ndarray:
    """Class ids of a group's rows: the labels for cond, the null id for uncond, cond rows first."""
    return np.concatenate([labels if br == COND else np.full(len(labels), null_class, np.int64) for br in branches])


def sample(runner: Runner, spec: Spec, class_ids: Sequence[int] | np.ndarray, noise: NoiseSource,
           record: bool = False, on_step: Callable[[int], None] | None = None) -> SampleResult:
    """Run the dual-rate sampler of ``spec`` on ``runner``; see the module docstring."""
    m, s, g = spec.model, spec.sampler, spec.guidance
    tab = s.tables
    labels = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    _check_labels(labels, m.num_classes)
    b = len(labels)
    shape = tuple(m.sample_shape)
    coef_z = np.asarray(tab.coef_z, np.float32)
    coef_x0 = np.asarray(tab.coef_x0, np.float32)
    coef_noise = np.asarray(tab.coef_noise, np.float32)
    alpha = np.asarray(tab.alpha, np.float32)
    sigma = np.asarray(tab.sigma, np.float32)
    logsnr = np.asarray(tab.logsnr, np.float32)
    plan = call_plan(spec)
    cls_of = {call.branches: group_labels(labels, m.null_class, call.branches) for step in plan for call in step}

    z = noise.draw(0, shape)
    _check_noise(z, b, shape, 0)
    caches: dict[tuple[str, ...], Any] = {}
    log: dict[str, list[int]] = {COND: [], UNCOND: []}
    result = SampleResult(x=z, refresh_log=log)
    for i, calls in enumerate(plan):
        x0_by_branch: dict[str, np.ndarray] = {}
        for call in calls:
            cls = cls_of[call.branches]
            rows = len(cls)
            z_in = z if rows == b else np.concatenate([z] * (rows // b))    # [rows, C, H, W]
            lam = np.full(rows, logsnr[i], np.float32)
            if call.refresh:
                caches[call.branches] = runner.encode(z_in, lam, cls)
                for br in call.branches:
                    log[br].append(i)
            feats = caches[call.branches]
            out = runner.denoise(z_in, lam, np.full(rows, logsnr[call.ctx_step], np.float32), cls, feats)
            if not np.all(np.isfinite(out)):
                _raise_non_finite(runner, feats, call.ctx_step, i, call.branches)
            x0 = to_x0(m.prediction, out, z_in, alpha[i], sigma[i])         # [rows, C, H, W]
            for k, br in enumerate(call.branches):
                x0_by_branch[br] = x0[k * b:(k + 1) * b]
        x0 = x0_by_branch[COND]
        if UNCOND in x0_by_branch:
            x0 = x0_by_branch[UNCOND] + np.float32(g.scale) * (x0 - x0_by_branch[UNCOND])
        if s.clip_x0 is not None:
            x0 = np.clip(x0, -s.clip_x0, s.clip_x0)
        z_next = coef_z[i] * z + coef_x0[i] * x0                                # [B, C, H, W]
        if coef_noise[i] != 0.0:
            xi = noise.draw(i + 1, shape)
            _check_noise(xi, b, shape, i + 1)
            z_next = z_next + coef_noise[i] * xi
        z = z_next.astype(np.float32, copy=False)
        if record:
            result.trajectory.append(z.copy())
            result.x0_estimates.append(np.asarray(x0, np.float32).copy())
        if on_step is not None:
            on_step(i)
    result.x = z
    return result


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if labels.size == 0:
        raise BadInputError("no class ids given; pass at least one class to sample")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise BadInputError(f"class id {int(bad[0])} is out of range; this model has classes 0..{num_classes - 1} "
                            f"(id {num_classes} is the null class used for guidance)")


def _check_noise(x: np.ndarray, b: int, shape: tuple[int, ...], index: int) -> None:
    if tuple(x.shape) != (b, *shape):
        raise BadInputError(f"noise draw {index} has shape {tuple(x.shape)}; expected {(b, *shape)}")


def _raise_non_finite(runner: Runner, features: Any, ctx_step: int, step: int, grp: tuple[str, ...]) -> None:
    """Name the graph that produced the NaN/Inf: the encoder if the cached features are bad."""
    to_host = getattr(runner, "features_to_numpy", None)
    branch = "+".join(grp)
    if to_host is not None:
        for k, f in enumerate(to_host(features)):
            if not np.all(np.isfinite(f)):
                raise NonFiniteError(f"non-finite values (NaN/Inf) in encoder output {k} computed at step "
                                     f"{ctx_step} (branch {branch}), seen at step {step}")
    raise NonFiniteError(f"non-finite values (NaN/Inf) in the denoiser output at step {step} (branch {branch})")
