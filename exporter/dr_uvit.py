"""DR-UViT: the reference dual-rate model family (context encoder + light denoiser).

Both nets are UViTs in the "simple diffusion" style: convolutional ResBlocks with
FiLM conditioning per resolution level, adaLN transformer blocks on the lowest
grid, and an up path with skips. The encoder has no prediction head; it emits the
last activation of each resolution level of its up path (full resolution first).
The denoiser has the same topology, narrower, and at each level of its down path
concatenates a 1x1 projection of the matching encoder feature.

Everything here is plain ``torch.nn`` with explicit attention (matmul + softmax)
so every exporter and converter sees the same small op set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .model_config import ModelConfig, NetConfig


def _groups(channels: int) -> int:
    """Largest divisor of ``channels`` not above 32, for GroupNorm."""
    for g in range(min(32, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class LogSnrEmbedding(nn.Module):
    """Sinusoidal features of a clamped, rescaled log-SNR, then an MLP."""

    def __init__(self, dim: int, clamp: tuple[float, float]):
        super().__init__()
        self.lo, self.hi = float(clamp[0]), float(clamp[1])
        half = dim // 2
        # Frequencies from 1 to 2^7 cycles over the clamp range: fine enough to
        # separate neighbouring steps of a 512-step grid, smooth at the ends.
        self.register_buffer("freqs", math.pi * torch.exp2(torch.linspace(0.0, 7.0, half)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, logsnr: torch.Tensor) -> torch.Tensor:
        u = (logsnr.clamp(self.lo, self.hi) - self.lo) / (self.hi - self.lo) * 2 - 1  # [B] in [-1, 1]
        arg = u[:, None] * self.freqs[None, :]                                      # [B, half]
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))         # [B, dim]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, FiLM from the embedding before the second conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero modulation from the embedding."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, emb_dim: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.ada = nn.Linear(emb_dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)   # adaLN-zero: each block starts as identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        s1, b1, g1, s2, b2, g2 = self.ada(F.silu(emb))[:, None, :].chunk(6, dim=2)  # each [B, 1, D]
        h = self.norm1(x) * (1 + s1) + b1
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)  # [B, H, N, N]
        h = (att @ v).transpose(1, 2).reshape(b, n, d)
        x = x + g1 * self.proj(h)
        h = self.norm2(x) * (1 + s2) + b2
        return x + g2 * self.mlp(h)


class Bottleneck(nn.Module):
    """Tokens of the lowest grid through adaLN transformer blocks, back to a map."""

    def __init__(self, channels: int, grid: int, net: NetConfig, emb_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(channels, net.transformer_dim)
        self.pos = nn.Parameter(torch.randn(1, grid * grid, net.transformer_dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(net.transformer_dim, net.heads, net.mlp_ratio, emb_dim)
                                    for _ in range(net.transformer_depth))
        self.norm = nn.LayerNorm(net.transformer_dim, eps=1e-6)
        self.proj_out = nn.Linear(net.transformer_dim, channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tok = self.proj_in(x.flatten(2).transpose(1, 2)) + self.pos   # [B, HW, D]
        for blk in self.blocks:
            tok = blk(tok, emb)
        out = self.proj_out(self.norm(tok)).transpose(1, 2).reshape(b, c, hgt, wid)
        return x + out


class UViTBody(nn.Module):
    """Shared UViT trunk: down path, transformer bottleneck, up path with skips.

    ``extra[l]`` (optional) is concatenated to the input of level ``l`` of the
    down path; the forward returns the last activation of each up-path level,
    full resolution first.
    """

    def __init__(self, net: NetConfig, in_channels: int, image_size: int, emb_dim: int,
                 extra_channels: tuple[int, ...] | None = None):
        super().__init__()
        widths = net.widths
        extra = extra_channels or (0,) * len(widths)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = widths[0]
        for lvl, w in enumerate(widths):
            blocks = nn.ModuleList()
            for j in range(net.res_blocks):
                blocks.append(ResBlock(ch + (extra[lvl] if j == 0 else 0), w, emb_dim))
                ch = w
            self.down.append(blocks)
            if lvl + 1 < len(widths):
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        grid = image_size // 2 ** (len(widths) - 1)
        self.mid = Bottleneck(ch, grid, net, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            w = widths[lvl]
            blocks = nn.ModuleList()
            for _ in range(net.res_blocks):
                blocks.append(ResBlock(ch + w, w, emb_dim))   # skip from the matching down block
                ch = w
            self.up.append(blocks)
            if lvl > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out_channels = widths

    def forward(self, x: torch.Tensor, emb: torch.Tensor,
                extra: tuple[torch.Tensor, ...] | None = None) -> list[torch.Tensor]:
        h = self.stem(x)
        skips = []
        for lvl, blocks in enumerate(self.down):
            for j, blk in enumerate(blocks):
                if j == 0 and extra is not None:
                    h = torch.cat([h, extra[lvl]], dim=1)
                h = blk(h, emb)
                skips.append(h)
            if lvl < len(self.downsample):
                h = self.downsample[lvl](h)
        h = self.mid(h, emb)
        levels: list[torch.Tensor] = []
        for i, blocks in enumerate(self.up):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            levels.append(h)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return levels[::-1]   # full resolution first


class ContextEncoder(nn.Module):
    """Heavy net E(z_tau, logsnr_tau, class) -> one feature map per level (full res first)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.t_emb = LogSnrEmbedding(cfg.emb_dim, cfg.logsnr_clamp)
        self.c_emb = nn.Embedding(cfg.num_classes + 1, cfg.emb_dim)
        self.body = UViTBody(cfg.encoder, cfg.in_channels, cfg.image_size, cfg.emb_dim)
        self.out_norms = nn.ModuleList(nn.GroupNorm(_groups(w), w) for w in cfg.encoder.widths)

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, class_id: torch.Tensor) -> tuple[torch.Tensor, ...]:
        emb = self.t_emb(logsnr) + self.c_emb(class_id)
        levels = self.body(z, emb)
        # Normalised features keep the cached tensors in a narrow range (helps fp16 backends).
        return tuple(norm(f) for norm, f in zip(self.out_norms, levels))


class LightDenoiser(nn.Module):
    """Light net g(z_t, logsnr_t, logsnr_ctx, class, *features) -> prediction (v, eps or x0)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.t_emb = LogSnrEmbedding(cfg.emb_dim, cfg.logsnr_clamp)
        self.ctx_emb = LogSnrEmbedding(cfg.emb_dim, cfg.logsnr_clamp)
        self.c_emb = nn.Embedding(cfg.num_classes + 1, cfg.emb_dim)
        proj = [cfg.feature_proj or max(1, w // 2) for w in cfg.denoiser.widths]
        self.feat_proj = nn.ModuleList(nn.Conv2d(we, p, 1) for we, p in zip(cfg.encoder.widths, proj))
        self.body = UViTBody(cfg.denoiser, cfg.in_channels, cfg.image_size, cfg.emb_dim, tuple(proj))
        w0 = cfg.denoiser.widths[0]
        self.head_norm = nn.GroupNorm(_groups(w0), w0)
        self.head = nn.Conv2d(w0, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, logsnr_ctx: torch.Tensor,
                class_id: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        emb = self.t_emb(logsnr) + self.ctx_emb(logsnr_ctx) + self.c_emb(class_id)
        extra = tuple(p(f) for p, f in zip(self.feat_proj, features))
        levels = self.body(z, emb, extra)
        return self.head(F.silu(self.head_norm(levels[0])))


def build_dr_uvit(cfg: ModelConfig) -> tuple[ContextEncoder, LightDenoiser]:
    """Construct the reference pair for a config (random init)."""
    cfg.check()
    return ContextEncoder(cfg), LightDenoiser(cfg)
