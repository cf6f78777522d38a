"""Sample grids and PNG files, on Pillow (deterministic bytes for the same pixels)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def to_uint8(images: np.ndarray, data_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map float images in ``data_range`` to uint8, rounding half up after clipping."""
    lo, hi = data_range
    x = (np.clip(np.asarray(images, np.float64), lo, hi) - lo) / (hi - lo)
    return np.floor(x * 255.0 + 0.5).astype(np.uint8)


def _image(pixels: np.ndarray):
    """``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` uint8 as a Pillow image."""
    from PIL import Image

    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"expected pixels [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    return Image.fromarray(arr)            # uint8: L, RGB or RGBA from the shape


def grid(images: np.ndarray, rows: int, scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tile ``[N, C, H, W]`` uint8 images (C = 1, 3 or 4) into an ``[H', W', C]`` grid, ``rows``
    rows, white padding, each tile upscaled ``scale`` times (nearest neighbour)."""
    from PIL import Image

    images = np.asarray(images, np.uint8)
    n, c, h, w = images.shape
    cols = -(-n // rows)
    tile_h, tile_w = h * scale + pad, w * scale + pad
    size = (cols * tile_w + pad, rows * tile_h + pad)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    canvas = Image.new(mode, size, (255,) * c if c > 1 else 255)
    for k in range(n):
        r, q = divmod(k, cols)
        tile = _image(images[k].transpose(1, 2, 0)).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        canvas.paste(tile, (pad + q * tile_w, pad + r * tile_h))
    out = np.asarray(canvas)
    return out[:, :, None] if out.ndim == 2 else out


def encode_png(pixels: np.ndarray) -> bytes:
    """``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` uint8 as PNG bytes."""
    buf = io.BytesIO()
    _image(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """The pixels as a PNG file, written atomically."""
    from dualrate.exporter.atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), encode_png(pixels))
