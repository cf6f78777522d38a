"""Training of a DR-UViT dual-rate model (the project's own; produces the shipped checkpoint).

Per example (v-prediction, cosine log-SNR, continuous time):

1. t ~ U(0, 1) (stratified over the batch); the encoder's time tau >= t is t with
   probability ``p_same_time``, else t + U(0, max_gap) clipped to 1 — the gaps a
   refresh every K steps produces at sampling time;
2. z_t = alpha_t x + sigma_t eps, and z_tau drawn from the forward process given
   z_t: z_tau = (alpha_tau/alpha_t) z_t + sigma_tau sqrt(-expm1(l_tau - l_t)) eps';
3. features = E(z_tau, l_tau, c), zeroed per example with probability
   ``feature_dropout`` (the paper's most useful trick), class replaced by the
   null id with probability ``label_dropout`` (classifier-free guidance);
4. loss = mean (g(z_t, l_t, l_tau, c, features) - target)^2, target per the
   prediction type (v = alpha eps - sigma x).

An EMA of the weights is what gets saved.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from .model_pair import DualRateModel
from .schedules import cosine_logsnr


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10000
    batch_size: int = 128
    lr: float = 3e-4
    warmup: int = 200
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    feature_dropout: float = 0.5
    p_same_time: float = 0.25
    max_gap: float = 0.25
    grad_clip: float = 1.0
    max_minutes: float = 0.0          # 0: no time limit
    seed: int = 0
    logsnr_shift: float = 0.0


def _target(pred: str, x: torch.Tensor, eps: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    if pred == "v":
        return a * eps - s * x
    if pred == "eps":
        return eps
    return x


def _class_input(pair: DualRateModel) -> tuple[int, int]:
    """(num_classes, null class id) of the DR-UViT class-id conditioning; training feeds the modules directly."""
    from .errors import BadInputError

    conds = list(pair.conditioning)
    if len(conds) != 1 or conds[0].num_classes is None or conds[0].null is None or np.ndim(conds[0].null) != 0:
        raise BadInputError(f"training takes a DR-UViT model (one class-id conditioning with a null class); this "
                            f"model's conditioning is {[c.name for c in conds]}")
    return int(conds[0].num_classes), int(conds[0].null)


def train_pair(pair: DualRateModel, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
               log: Callable[[str], None] = print, progress: Any = None) -> tuple[DualRateModel, dict]:
    """Train a DR-UViT model (``encoder(z, logsnr, class_id)``, ``denoiser(z, logsnr, logsnr_ctx, class_id,
    *features)``) in place; return the EMA model and a summary (steps, minutes, final loss).
    ``progress`` (``dualrate.exporter.progress``) is told every optimizer step."""
    from .progress import Stages

    with Stages(progress)("train", f"training {cfg.steps} steps", total=cfg.steps) as advance:
        return _train(pair, images, labels, cfg, log, advance)


def _train(pair: DualRateModel, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
           log: Callable[[str], None], advance: Callable[[], None]) -> tuple[DualRateModel, dict]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    _, null_class = _class_input(pair)
    x_all = torch.as_tensor(images, dtype=torch.float32)
    y_all = torch.as_tensor(labels, dtype=torch.int64)
    params = list(pair.encoder.parameters()) + list(pair.denoiser.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ema = dataclasses.replace(pair, encoder=copy.deepcopy(pair.encoder).eval(),
                              denoiser=copy.deepcopy(pair.denoiser).eval())
    ema_params = list(ema.encoder.parameters()) + list(ema.denoiser.parameters())
    pair.encoder.train()
    pair.denoiser.train()
    lo, hi = pair.logsnr_clamp
    start, losses, step = time.monotonic(), [], 0
    for step in range(1, cfg.steps + 1):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / max(1, cfg.warmup))
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        x, c = x_all[idx], y_all[idx].clone()
        b = len(x)
        bshape = (b, 1, 1, 1)
        # 1. times: stratified t, tau >= t
        t = (torch.arange(b) + torch.rand(b, generator=gen)) / b
        gap = torch.rand(b, generator=gen) * cfg.max_gap
        gap = torch.where(torch.rand(b, generator=gen) < cfg.p_same_time, torch.zeros_like(gap), gap)
        tau = (t + gap).clamp(max=1.0)
        lt = cosine_logsnr(t.double(), lo, hi, cfg.logsnr_shift)
        ltau = cosine_logsnr(tau.double(), lo, hi, cfg.logsnr_shift)
        a_t, s_t = torch.sigmoid(lt).sqrt(), torch.sigmoid(-lt).sqrt()
        a_tau, s_tau = torch.sigmoid(ltau).sqrt(), torch.sigmoid(-ltau).sqrt()
        # 2. correlated states from the forward process
        eps = torch.randn(x.shape, generator=gen)
        z_t = a_t.float().view(bshape) * x + s_t.float().view(bshape) * eps
        cond_std = (s_tau * torch.sqrt(-torch.expm1(ltau - lt))).float().view(bshape)
        z_tau = (a_tau / a_t).float().view(bshape) * z_t + cond_std * torch.randn(x.shape, generator=gen)
        # 3. dropouts
        c[torch.rand(b, generator=gen) < cfg.label_dropout] = null_class
        feats = pair.encoder(z_tau, ltau.float(), c)
        keep = (torch.rand(b, generator=gen) >= cfg.feature_dropout).float()
        feats = tuple(f * keep.view(bshape) for f in feats)
        # 4. loss
        out = pair.denoiser(z_t, lt.float(), ltau.float(), c, *feats)
        target = _target(pair.prediction, x, eps, a_t.float().view(bshape), s_t.float().view(bshape))
        loss = torch.mean((out - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        losses.append(loss.item())
        advance()
        elapsed = time.monotonic() - start
        if step % 200 == 0 or step == cfg.steps:
            log(f"step {step:6d}  loss {np.mean(losses[-200:]):.4f}  {elapsed / 60:.1f} min")
        if cfg.max_minutes and elapsed > cfg.max_minutes * 60:
            log(f"time limit of {cfg.max_minutes} min reached at step {step}")
            break
    pair.encoder.eval()
    pair.denoiser.eval()
    summary = {**asdict(cfg), "steps_done": step, "minutes": round((time.monotonic() - start) / 60, 2),
               "final_loss": float(np.mean(losses[-200:])) if losses else math.nan}
    return ema, summary


def train_checkpoint(size: str, out_dir, cfg: TrainConfig, force: bool = False,
                     log: Callable[[str], None] = print, progress: Any = None):
    """Train a preset on the bundled digits data and save the EMA checkpoint."""
    from .checkpoint import make_config, save_checkpoint
    from .digits_data import load_digits_images
    from .model_config import preset
    from .model_pair import build_pair

    from .errors import BadInputError

    model_cfg = preset(size)
    if model_cfg.in_channels != 1:
        raise BadInputError(f"size {size!r} has {model_cfg.in_channels} channels; digits training needs a "
                            "1-channel size such as 'digits' or 'tiny'")
    if model_cfg.num_classes < 10:
        raise BadInputError(f"size {size!r} has {model_cfg.num_classes} classes; the digits have 10")
    model = {"family": "dr-uvit", **model_cfg.to_dict()}
    pair = build_pair(model)
    images, labels = load_digits_images(model_cfg.image_size)
    ema, summary = train_pair(pair, images, labels, cfg, log=log, progress=progress)
    summary["data"] = f"sklearn digits 8x8 upsampled to {model_cfg.image_size}x{model_cfg.image_size}"
    summary["torch"] = torch.__version__
    return save_checkpoint(ema, make_config(model, summary), out_dir, force=force), summary
