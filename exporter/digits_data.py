"""The scikit-learn 8x8 digits, upsampled: the data the shipped checkpoint learns.

scikit-learn bundles the data set (1,797 images, 10 classes) so nothing is
downloaded. Images are scaled to [-1, 1] and bilinearly upsampled.
"""

from __future__ import annotations

import numpy as np

from .errors import BackendUnavailableError


def load_digits_images(image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images [N, 1, S, S] float32 in [-1, 1], labels [N] int64)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise BackendUnavailableError("training on digits needs scikit-learn: pip install 'dualrate[train]'") from None
    import torch
    import torch.nn.functional as F

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]   # [N, 1, 8, 8]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1).numpy(), d.target.astype(np.int64)


def downsample_to_8x8(images: np.ndarray) -> np.ndarray:
    """Average-pool ``[N, 1, S, S]`` images back to the 8x8 grid, scaled to 0..16 like the source data."""
    import torch
    import torch.nn.functional as F

    x = F.adaptive_avg_pool2d(torch.as_tensor(images, dtype=torch.float32), 8)
    return ((x.clamp(-1, 1) + 1) * 8.0).reshape(len(images), 64).numpy()


def fit_digit_classifier(seed: int = 0):
    """A small classifier on the real digits (8x8); returns ``(model, held-out accuracy)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits_images(16)
    feats = downsample_to_8x8(x)
    xtr, xte, ytr, yte = train_test_split(feats, y, test_size=0.25, random_state=seed, stratify=y)
    clf = LogisticRegression(max_iter=3000)
    clf.fit(xtr, ytr)
    return clf, float(clf.score(xte, yte))
