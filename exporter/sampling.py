"""The dual-rate sampling loop, written once against the runner contract (``runner.py``).

The loop reads only the spec: its tables, the refresh steps, guidance, and each graph
input's role. Per step ``i`` (``time`` = ``tables.model_time``, what the networks were
trained on: log-SNR, continuous t or a diffusers timestep)::

    for each active branch b (cond; uncond while guidance is active at i):
        if b must refresh (cache rule): feats[b] = encode(sample=z, time=time[i], cond=cond_b); ctx[b] = i
        out_b = denoise(sample=z, time=time[i], time_ctx=time[ctx[b]], cond=cond_b, features=feats[b])
    x0 = guide(to_x0(out)); optional clip
    z = coef_z[i] z + coef_x0[i] x0 + coef_noise[i] xi[i]
    (after the last step, with a decoder: decoded = decode(z / scaling_factor + shift_factor))

``cond_b`` is the caller's conditioning for the cond branch and the declared null values
for the uncond branch. When guidance is active at every step, both branches refresh at
the same steps, so they run as one batch of 2B (cond rows first): same numbers, half the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from .conditioning import COND, UNCOND, check_conditioning, group_conditioning
from .errors import BadInputError, NonFiniteError
from .runner import Runner, graph_feeds, role_values
from .sampler_tables import to_x0
from .spec import Spec


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
    decoded: np.ndarray | None = None               # the decoder's output on the final sample, where there is one


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


def graph_rows(spec: Spec, batch: int) -> int:
    """Rows per graph call for ``batch`` samples: 2x when both guidance branches run batched."""
    lam = spec.sampler.tables.logsnr
    guided_everywhere = all(spec.guidance.active(lam[i]) for i in range(spec.sampler.num_steps))
    return 2 * batch if guided_everywhere else batch


def time_values(spec: Spec) -> np.ndarray:
    """The networks' time input per step (float64; each graph input casts it to its own dtype)."""
    return np.asarray(spec.sampler.tables.model_time, np.float64)


def decoder_input(spec: Spec, x: np.ndarray) -> np.ndarray:
    """What the decoder graph is fed for final samples ``x``: ``x / scaling_factor + shift_factor`` in float32."""
    d = spec.model.decoder
    return (x.astype(np.float32) / np.float32(d.scaling_factor) + np.float32(d.shift_factor)).astype(np.float32)


def decode(runner: Runner, spec: Spec, x: np.ndarray) -> np.ndarray:
    """Run the decoder once on final samples; NonFiniteError names it if it emits NaN/Inf."""
    gio = spec.model.decoder.graph
    out = np.asarray(runner.decode(graph_feeds(gio, {"sample": decoder_input(spec, x)})))
    if not np.all(np.isfinite(out)):
        raise NonFiniteError("non-finite values (NaN/Inf) in the decoder output on the final samples")
    return out


def sample(runner: Runner, spec: Spec, conditioning: Mapping[str, Any] | Sequence[int] | np.ndarray | None,
           noise: NoiseSource, *, nulls: Mapping[str, np.ndarray] | None = None, record: bool = False,
           decode_final: bool = True, on_step: Callable[[int], None] | None = None) -> SampleResult:
    """Run the dual-rate sampler of ``spec`` on ``runner``; see the module docstring.

    ``conditioning`` maps each declared conditioning input to ``[B, *shape]`` (a class-conditional
    model also takes a list of class ids); ``nulls`` holds the stored null tensors guidance needs
    (``Bundle.nulls()``). With a decoder in the spec, ``result.decoded`` is the decoded final sample.
    """
    m, s, g = spec.model, spec.sampler, spec.guidance
    tab = s.tables
    cond = check_conditioning(spec, conditioning)
    shape = tuple(m.sample_shape)
    coef_z = np.asarray(tab.coef_z, np.float32)
    coef_x0 = np.asarray(tab.coef_x0, np.float32)
    coef_noise = np.asarray(tab.coef_noise, np.float32)
    alpha = np.asarray(tab.alpha, np.float32)
    sigma = np.asarray(tab.sigma, np.float32)
    times = time_values(spec)
    plan = call_plan(spec)

    z = noise.draw(0, shape)
    b = len(next(iter(cond.values()))) if cond else len(z)
    _check_noise(z, b, shape, 0)
    cond_of = {call.branches: group_conditioning(spec, cond, nulls, call.branches) for step in plan for call in step}
    caches: dict[tuple[str, ...], Any] = {}
    log: dict[str, list[int]] = {COND: [], UNCOND: []}
    result = SampleResult(x=z, refresh_log=log)
    for i, calls in enumerate(plan):
        x0_by_branch: dict[str, np.ndarray] = {}
        for call in calls:
            rows = b * len(call.branches)
            z_in = tile_rows(z, len(call.branches))                                # [rows, C, H, W]
            t_i, t_ctx = np.full(rows, times[i]), np.full(rows, times[call.ctx_step])
            if call.refresh:
                caches[call.branches] = runner.encode(
                    graph_feeds(m.encoder, role_values(z_in, t_i, None, cond_of[call.branches])))
                for br in call.branches:
                    log[br].append(i)
            feats = caches[call.branches]
            out = runner.denoise(graph_feeds(m.denoiser, role_values(z_in, t_i, t_ctx, cond_of[call.branches], feats)))
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
    if decode_final and m.decoder is not None:
        result.decoded = decode(runner, spec, z)
    return result


def tile_rows(z: np.ndarray, groups: int) -> np.ndarray:
    """The state repeated for each branch of a batched group (``[groups * B, C, H, W]``)."""
    return z if groups == 1 else np.concatenate([z] * groups)


def _check_noise(x: np.ndarray, b: int, shape: tuple[int, ...], index: int) -> None:
    if tuple(x.shape) != (b, *shape):
        raise BadInputError(f"noise draw {index} has shape {tuple(x.shape)}; expected {(b, *shape)}")


def _raise_non_finite(runner: Runner, features: Any, ctx_step: int, step: int, grp: tuple[str, ...]) -> None:
    """Name the graph that produced the NaN/Inf: the encoder if the cached features are bad."""
    to_host = getattr(runner, "features_to_numpy", None)
    branch = "+".join(grp)
    if to_host is not None:
        for name, f in to_host(features).items():
            if not np.all(np.isfinite(f)):
                raise NonFiniteError(f"non-finite values (NaN/Inf) in encoder output {name!r} computed at step "
                                     f"{ctx_step} (branch {branch}), seen at step {step}")
    raise NonFiniteError(f"non-finite values (NaN/Inf) in the denoiser output at step {step} (branch {branch})")
