"""Minimal, dependency-free PNG writing and sample grids (deterministic bytes)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def to_uint8(images: np.ndarray, data_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map float images in ``data_range`` to uint8, rounding half up after clipping."""
    lo, hi = data_range
    x = (np.clip(np.asarray(images, np.float64), lo, hi) - lo) / (hi - lo)
    return np.floor(x * 255.0 + 0.5).astype(np.uint8)


def grid(images: np.ndarray, rows: int, scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tile ``[N, C, H, W]`` uint8 images into an ``[H', W', C]`` grid, ``rows`` rows, white padding."""
    n, c, h, w = images.shape
    cols = -(-n // rows)
    tile_h, tile_w = h * scale + pad, w * scale + pad
    out = np.full((rows * tile_h + pad, cols * tile_w + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        img = images[k].transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)   # [H*s, W*s, C]
        out[pad + r * tile_h: pad + r * tile_h + h * scale, pad + q * tile_w: pad + q * tile_w + w * scale] = img
    return out


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` uint8 as PNG bytes."""
    arr = np.asarray(pixels, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    color = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))   # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    from dualrate.exporter.atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), encode_png(pixels))
