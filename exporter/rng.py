"""The portable noise generator (spec ``noise.rng.kind = "philox4x32-10"``): counter-based
Gaussian noise that a Swift/Kotlin/C++ runtime reproduces from this docstring alone.

Algorithm, all integer arithmetic on uint32 modulo 2^32:

1. Philox4x32-10 (Salmon et al., SC'11; Random123). Constants M0 = 0xD2511F53,
   M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85. ``mulhilo(a, b)`` is the full
   64-bit product split into (hi, lo) 32-bit halves. Ten rounds; round r uses key
   ``(k0 + r*W0, k1 + r*W1)`` (the key is bumped *between* rounds, so round 0 uses
   the key as given)::

       (hi0, lo0) = mulhilo(M0, c0); (hi1, lo1) = mulhilo(M1, c2)
       c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

2. Key from a uint64 ``seed``: ``(k0, k1) = (seed & 0xFFFFFFFF, seed >> 32)``.

3. Counter ``(c0, c1, c2, c3) = (block, draw, sample, 0)``:
   ``block`` -- element ``e`` of the flattened (C-order) per-sample tensor comes from
   block ``e // 4``, lane ``e % 4``; lanes past the end of the last block are discarded.
   ``draw`` -- 0 is the initial noise z_0, ``i + 1`` is the noise injected at sampler
   step ``i``. ``sample`` -- the sample's index. Nothing depends on the batch size or
   on the tensor's shape beyond its element count, so sample b of a batch equals the
   same sample generated alone, and a shorter tensor is a prefix of a longer one.
   All three lanes are uint32, which bounds draws and samples to 2^32 and a sample to
   4 * 2^32 elements.

4. Uniforms, in float64, from the block's output words x0..x3:
   ``u_j = (x_j + 0.5) / 4294967296.0`` -- exact, and never 0 or 1.

5. Box-Muller, in float64, per lane pair: lanes (0, 1) give
   ``r*cos(t), r*sin(t)`` with ``r = sqrt(-2.0 * log(u_0))``, ``t = TWO_PI * u_1``
   (``TWO_PI`` = the float64 nearest 2*pi, 6.283185307179586); lanes (2, 3) likewise.
   Element ``4k + j`` (block k) is therefore ``(r01 cos t01, r01 sin t01, r23 cos t23, r23 sin t23)[j]``.

6. Dtype: each float64 normal is rounded to nearest float32 once, at the end.

Steps 1-4 are bit-exact everywhere. Step 5 goes through libm, whose float64 log/cos/sin
may differ in the last bit or two between platforms (numpy itself may use SIMD kernels);
after rounding to float32 that almost never shows, but a parity check must allow 1 ulp.

Two ways to assign keys and samples to batch rows (``PhiloxNoise``): one seed for the
whole batch with ``sample = b`` (the spec's default), or one seed per row with
``sample = 0`` for every row (``PhiloxNoise.per_row``), so a row is reproducible from
its seed alone.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import numpy as np

from .errors import SpecError

PHILOX_NAME = "philox4x32-10"

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
_U32_LIMIT = 1 << 32
_U64_LIMIT = 1 << 64
TWO_PI = 2.0 * math.pi  # the float64 constant the docstring names; doubling pi is exact


def _int_arg(name: str, value: object, lo: int, hi: int, hi_text: str) -> int:
    """``value`` as a Python int in ``[lo, hi)``; ``bool`` is refused because ``True`` as a
    seed or size is always a caller bug, never an intent."""
    expected = f"expected an integer in [{lo}, {hi_text})"
    if isinstance(value, (bool, np.bool_)):
        raise SpecError(f"{name} is {value!r}; {expected}")
    try:
        v = operator.index(value)
    except TypeError:
        raise SpecError(f"{name} is {value!r} ({type(value).__name__}); {expected}") from None
    if not lo <= v < hi:
        raise SpecError(f"{name} is {v}; {expected}")
    return v


def _seed_arg(name: str, value: object) -> int:
    return _int_arg(name, value, 0, _U64_LIMIT, "2**64")


def _u32_array(name: str, value: object, last: int) -> np.ndarray:
    """An integer array with last axis ``last`` and every entry a uint32 value, as uint64
    (the working dtype: products of two uint32 fit in it exactly)."""
    try:
        arr = np.asarray(value)
    except (OverflowError, ValueError):
        raise SpecError(f"{name} is {value!r}; expected uint32 values in an array [..., {last}]") from None
    if arr.ndim == 0 or arr.shape[-1] != last:
        raise SpecError(f"{name} has shape {arr.shape}; expected [..., {last}]")
    if arr.dtype == np.uint32:
        return arr.astype(np.uint64)
    if arr.size and arr.dtype.kind not in "iu":
        raise SpecError(f"{name} has dtype {arr.dtype}; expected uint32 (or integers in [0, 2**32))")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= _U32_LIMIT):
        raise SpecError(f"{name} has values in [{int(arr.min())}, {int(arr.max())}]; expected [0, 2**32)")
    return arr.astype(np.uint64)


def _philox_lanes(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on broadcastable uint64 arrays holding uint32 values; returns 4 such
    arrays. uint64 lets one multiply give the exact 64-bit product that mulhilo splits."""
    m0, m1, mask, shift = np.uint64(_M0), np.uint64(_M1), np.uint64(_MASK32), np.uint64(32)
    w0, w1 = np.uint64(_W0), np.uint64(_W1)
    for r in range(_ROUNDS):
        if r:
            k0 = (k0 + w0) & mask
            k1 = (k1 + w1) & mask
        p0 = m0 * c0
        p1 = m1 * c2
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
    return c0, c1, c2, c3


def philox4x32_10(counter: np.ndarray, key: tuple[int, int] | np.ndarray) -> np.ndarray:
    """counter: uint32 array [..., 4]; key: two uint32 (broadcast). Returns uint32 [..., 4].

    ``key`` is a pair ``(k0, k1)`` or an array [..., 2] that broadcasts against the
    counter's leading axes."""
    c = _u32_array("counter", counter, 4)
    k = _u32_array("key", key, 2)
    lanes = _philox_lanes(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k[..., 0], k[..., 1])
    return np.stack(np.broadcast_arrays(*lanes), axis=-1).astype(np.uint32)


def _box_muller(x0, x1, x2, x3) -> np.ndarray:
    """Steps 4-5 of the module docstring: four uint32 lanes (as integer arrays) -> float64
    normals [..., 4], in lane order."""
    x0, x1, x2, x3 = np.broadcast_arrays(x0, x1, x2, x3)
    out = np.empty((*x0.shape, 4), np.float64)
    for (a, b), (cos_lane, sin_lane) in (((x0, x1), (0, 1)), ((x2, x3), (2, 3))):
        # The half step keeps u off 0 (log(0) = -inf) and centres each of the 2^32 bins, so
        # the uniforms are symmetric about 1/2.
        u0 = (a.astype(np.float64) + 0.5) / 4294967296.0
        u1 = (b.astype(np.float64) + 0.5) / 4294967296.0
        r = np.sqrt(-2.0 * np.log(u0))
        t = TWO_PI * u1
        out[..., cos_lane] = r * np.cos(t)
        out[..., sin_lane] = r * np.sin(t)
    return out


def _normals(k0: np.ndarray, k1: np.ndarray, samples: np.ndarray, draw: int,
             sample_shape: tuple[int, ...]) -> np.ndarray:
    """The one code path behind every public generator: row b uses key (k0[b], k1[b]) and
    counter sample lane samples[b]. All three are uint64 [batch]."""
    n = math.prod(sample_shape)
    nblocks = -(-n // 4)
    block = np.arange(nblocks, dtype=np.uint64)[None, :]
    x0, x1, x2, x3 = _philox_lanes(block, np.uint64(draw), samples[:, None], np.uint64(0),
                                   k0[:, None], k1[:, None])
    out = _box_muller(x0, x1, x2, x3)
    # Round once, at the end: a float32 intermediate would make results depend on where
    # each runtime chose to narrow.
    flat = out.reshape(len(samples), nblocks * 4)[:, :n].astype(np.float32)
    return flat.reshape((len(samples), *sample_shape))


def _shape_arg(name: str, shape: object, batched: bool) -> tuple[int, ...]:
    """Non-negative dims; with ``batched`` the first is the batch and needs to be present."""
    expected = "expected a tuple of non-negative integers" + (" (batch, *sample_shape)" if batched else "")
    try:
        dims = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        raise SpecError(f"{name} is {shape!r}; {expected}") from None
    if batched and not dims:
        raise SpecError(f"{name} is (); {expected}")
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, (bool, np.bool_)):
            raise SpecError(f"{name}[{i}] is {d!r}; {expected}")
        try:
            d = operator.index(d)
        except TypeError:
            raise SpecError(f"{name}[{i}] is {d!r}; {expected}") from None
        if d < 0:
            raise SpecError(f"{name}[{i}] is {d}; {expected}")
        out.append(d)
    # The block index is one uint32 counter lane, so a sample holds at most 4 * 2^32 elements.
    n = math.prod(out[1:] if batched else out)
    if n > 4 * _U32_LIMIT:
        raise SpecError(f"{name} is {tuple(out)}, {n} elements per sample; expected at most 4 * 2**32")
    return tuple(out)


def normal_draw(seed: int, draw: int, shape: tuple[int, ...], sample_offset: int = 0) -> np.ndarray:
    """Standard normals, float32, shape = (batch, *per_sample_shape); sample b uses counter sample=b+sample_offset."""
    seed = _seed_arg("seed", seed)
    draw = _int_arg("draw", draw, 0, _U32_LIMIT, "2**32")
    dims = _shape_arg("shape", shape, batched=True)
    sample_offset = _int_arg("sample_offset", sample_offset, 0, _U32_LIMIT, "2**32")
    batch = dims[0]
    if sample_offset + batch > _U32_LIMIT:
        raise SpecError(f"sample_offset {sample_offset} + batch {batch} exceeds 2**32; "
                        f"expected sample indices to fit the uint32 counter lane")
    k0 = np.full(batch, seed & _MASK32, np.uint64)
    k1 = np.full(batch, seed >> 32, np.uint64)
    samples = np.arange(sample_offset, sample_offset + batch, dtype=np.uint64)
    return _normals(k0, k1, samples, draw, dims[1:])


class PhiloxNoise:
    """The sampler's noise source: ``draw(index, sample_shape)`` -> float32 [batch, *sample_shape].

    ``PhiloxNoise(seed, batch)``: one seed, row b uses counter sample = b (what a spec's
    ``noise.rng.seed`` means). ``PhiloxNoise.per_row(seeds)``: row b uses key seeds[b] and
    sample = 0, so ``per_row([s])`` and ``PhiloxNoise(s, 1)`` produce the same noise.
    """

    def __init__(self, seed: int, batch: int):
        seed = _seed_arg("seed", seed)
        batch = _int_arg("batch", batch, 1, _U32_LIMIT, "2**32")
        self._k0 = np.full(batch, seed & _MASK32, np.uint64)
        self._k1 = np.full(batch, seed >> 32, np.uint64)
        self._samples = np.arange(batch, dtype=np.uint64)

    @classmethod
    def per_row(cls, seeds: Sequence[int]) -> PhiloxNoise:
        try:
            rows = [_seed_arg(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
        except TypeError:
            raise SpecError(f"seeds is {seeds!r}; expected a sequence of integers in [0, 2**64)") from None
        if not rows:
            raise SpecError("seeds is empty; expected one seed per batch row")
        self = cls.__new__(cls)
        self._k0 = np.array([s & _MASK32 for s in rows], np.uint64)
        self._k1 = np.array([s >> 32 for s in rows], np.uint64)
        self._samples = np.zeros(len(rows), np.uint64)
        return self

    @property
    def batch(self) -> int:
        return len(self._samples)

    def draw(self, index: int, sample_shape: tuple[int, ...]) -> np.ndarray:
        """float32 [batch, *sample_shape]; index 0 = initial noise, i + 1 = noise of step i."""
        index = _int_arg("index", index, 0, _U32_LIMIT, "2**32")
        dims = _shape_arg("sample_shape", sample_shape, batched=False)
        return _normals(self._k0, self._k1, self._samples, index, dims)
