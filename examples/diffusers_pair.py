"""A tiny Dual-Rate Diffusion pair assembled from diffusers' own building blocks.

* encoder   -- ``diffusers.ControlNetModel`` (the heavy, low-rate half).  It reads the
  noisy latent itself as its control image, so one call is
  ``encoder(sample=x, timestep=t, encoder_hidden_states=text, controlnet_cond=x,
  return_dict=False) -> (down_residuals: list[4 tensors], mid_residual)``.
* denoiser  -- ``diffusers.UNet2DConditionModel`` (the light, every-step half).  It
  consumes the encoder's cached residuals:
  ``denoiser(x, t, encoder_hidden_states=text, encoder_attention_mask=mask,
  down_block_additional_residuals=down, mid_block_additional_residual=mid,
  return_dict=False) -> (eps,)``.
* vae       -- ``diffusers.AutoencoderKL``; ``vae.decode(z, return_dict=False)[0]`` maps
  ``z = latent / scaling_factor`` [B, 4, 8, 12] to a [B, 3, 16, 24] image.

Everything is small enough for CPU tests.  Every zero-initialised layer (ControlNet's
zero convolutions and its conditioning-embedding ``conv_out``) is re-drawn with a
seeded default init so that every path carries signal; ``build_pair`` asserts this.

Text masks are float32 (1.0 = token, 0.0 = padding): diffusers turns any mask into
``(1 - mask.to(sample.dtype)) * -10000`` so both int64 and float32 work, and float32
avoids an extra Cast in the ONNX graph.  Note ``ControlNetModel.forward`` has no
cross-attention (text) mask -- its ``attention_mask`` argument is not a text mask --
so the encoder sees padding positions, which ``make_text`` sets to zero vectors.

ONNX: all three export with ``torch.onnx.export(..., dynamo=True)`` at opset 18 with a
dynamic batch axis.  One workaround is applied here: the denoiser uses the classic
``AttnProcessor`` instead of diffusers' default ``AttnProcessor2_0``; see ``build_pair``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from torch import nn

TEXT_DIM = 32
TEXT_LEN = 8
LATENT_SHAPE = (4, 8, 12)  # C, H, W -- deliberately non-square
MASK_DTYPE = torch.float32

# Shared by encoder and denoiser so the ControlNet residuals line up with the UNet's
# skip connections: 1 (conv_in) + 1 (block 0) + 1 (downsample) + 1 (block 1) = 4
# down residuals of [B,32,8,12], [B,32,8,12], [B,32,4,6], [B,64,4,6]; mid [B,64,4,6].
_SHARED = dict(
    in_channels=LATENT_SHAPE[0],
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=TEXT_DIM,
    attention_head_dim=8,
)


@dataclass
class DiffusersPair:
    encoder: ControlNetModel
    denoiser: UNet2DConditionModel
    vae: AutoencoderKL
    scaling_factor: float
    scheduler_config: dict
    null_text: torch.Tensor  # [1, L, D] float32, the empty prompt
    null_mask: torch.Tensor  # [1, L] MASK_DTYPE
    seed: int = 0
    text_dim: int = TEXT_DIM
    text_len: int = TEXT_LEN
    latent_shape: tuple = LATENT_SHAPE
    mask_dtype: torch.dtype = MASK_DTYPE
    down_shapes: list = field(default_factory=list)  # per-sample residual shapes
    mid_shape: tuple = ()

    def make_text(self, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic "prompt" embeddings [B, L, D] float32 and mask [B, L].

        Row ``i`` has ``1 + (seed + i) % L`` real tokens; padding is zero vectors.
        """
        g = torch.Generator().manual_seed(seed)
        text = torch.randn(batch, self.text_len, self.text_dim, generator=g)
        lengths = 1 + (torch.arange(batch) + seed) % self.text_len
        mask = (torch.arange(self.text_len)[None, :] < lengths[:, None]).to(self.mask_dtype)
        return text * mask[..., None].float(), mask

    def null(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty-prompt embedding and mask repeated to ``batch`` (for CFG)."""
        return self.null_text.expand(batch, -1, -1).clone(), self.null_mask.expand(batch, -1).clone()


def _redraw_zero_layers(model: nn.Module) -> int:
    """Re-initialise every Conv/Linear whose weight is all zeros (diffusers' zero_module)."""
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.detach().any():
            m.reset_parameters()
            n += 1
    return n


def _differs(a, b) -> bool:
    fa = torch.cat([x.flatten() for x in a])
    fb = torch.cat([x.flatten() for x in b])
    return bool((fa - fb).abs().max() > 1e-4 * fa.abs().max())


@torch.no_grad()
def build_pair(seed: int = 0, *, encoder_layers: int = 8) -> DiffusersPair:
    """Build the seeded pair.  ``encoder_layers`` (transformer layers per ControlNet
    attention block; the denoiser has 1) trades encoder weight for export time."""
    with torch.random.fork_rng(devices=[]):  # deterministic, leaves caller's RNG alone
        torch.manual_seed(seed)
        encoder = ControlNetModel(
            **_SHARED,
            conditioning_channels=LATENT_SHAPE[0],
            # a single entry means conv_in -> conv_out with no stride-2 blocks, so the
            # control input is read at latent resolution (default (16,32,96,256) is /8).
            conditioning_embedding_out_channels=(16,),
            # Heavier than the denoiser without changing residual shapes: 8 transformer
            # layers per attention block vs 1 gives 1.75M vs 1.06M parameters and ~1.3x
            # the UNet's FLOPs (the UNet also has an up path).  ONNX export time grows
            # ~linearly with depth (~1.5 s CPU per layer); tests may pass 2.
            transformer_layers_per_block=encoder_layers,
        )
        denoiser = UNet2DConditionModel(
            **_SHARED,
            sample_size=LATENT_SHAPE[1:],
            out_channels=LATENT_SHAPE[0],
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            transformer_layers_per_block=1,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=LATENT_SHAPE[0],
            # two blocks = one 2x downsampling: latent 8x12 <-> image 16x24
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=2 * LATENT_SHAPE[1],
        )
        n_redrawn = sum(_redraw_zero_layers(m) for m in (encoder, denoiser, vae))
        assert n_redrawn > 0, "expected ControlNet zero convolutions"
        null_text = torch.zeros(1, TEXT_LEN, TEXT_DIM)
        null_text[0, 0] = torch.randn(TEXT_DIM)  # a fixed "BOS" token, rest is padding
    null_mask = torch.zeros(1, TEXT_LEN, dtype=MASK_DTYPE)
    null_mask[0, 0] = 1

    for m in (encoder, denoiser, vae):
        m.eval().float().requires_grad_(False)
    # Workaround: with AttnProcessor2_0 the text mask reaches SDPA through
    # prepare_attention_mask's repeat_interleave + view(batch, heads, -1, L); torch.export
    # cannot prove mask.shape[0] == sample.shape[0] there, and a dynamic batch fails
    # ("size of tensor a ((96*s53)//s89) must match ... (s31//s89)").  The classic
    # processor (baddbmm + softmax) broadcasts the mask and exports; same numerics.
    # (Alternative on the caller side: torch._check(mask.shape[0] == sample.shape[0]).)
    # The encoder and VAE take no text mask and keep the default processor.
    denoiser.set_attn_processor(AttnProcessor())

    scheduler_config = {"_class_name": "DDIMScheduler", **DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, timestep_spacing="trailing", steps_offset=1,
        set_alpha_to_one=False, prediction_type="epsilon", clip_sample=False,
    ).config}

    pair = DiffusersPair(encoder, denoiser, vae, float(vae.config.scaling_factor),
                         scheduler_config, null_text, null_mask, seed)

    # Sanity: every path carries signal.
    g = torch.Generator().manual_seed(seed + 123)
    x = torch.randn(2, *LATENT_SHAPE, generator=g)
    t = torch.tensor([10, 900], dtype=torch.int64)
    text, mask = pair.make_text(2, seed=1)
    text2, _ = pair.make_text(2, seed=2)

    def enc(t_, text_):
        down, mid = encoder(sample=x, timestep=t_, encoder_hidden_states=text_,
                            controlnet_cond=x, return_dict=False)
        return [*down, mid]

    def den(res, text_, mask_):
        return denoiser(x, t, encoder_hidden_states=text_, encoder_attention_mask=mask_,
                        down_block_additional_residuals=res[:-1],
                        mid_block_additional_residual=res[-1], return_dict=False)

    res = enc(t, text)
    pair.down_shapes = [tuple(r.shape[1:]) for r in res[:-1]]
    pair.mid_shape = tuple(res[-1].shape[1:])
    assert _differs(res, enc(t, text2)), "encoder ignores text"
    assert _differs(res, enc(t.flip(0), text)), "encoder ignores timestep"
    eps = den(res, text, mask)
    assert eps[0].shape == (2, *LATENT_SHAPE)
    assert _differs(eps, den([r * 0.5 for r in res], text, mask)), "denoiser ignores residuals"
    assert _differs(eps, den(res, text2, mask)), "denoiser ignores text"
    assert _differs(eps, den(res, text, torch.ones_like(mask))), "denoiser ignores mask"
    img = vae.decode(x / pair.scaling_factor, return_dict=False)[0]
    assert img.shape == (2, 3, 2 * LATENT_SHAPE[1], 2 * LATENT_SHAPE[2])
    return pair
