"""A Dual-Rate model nobody here designed, through the Python API: a diffusers ControlNet as the
heavy encoder, a small UNet2DConditionModel as the light denoiser (its down/mid residuals are
the cached features), text embeddings with a mask, diffusers DDIM timesteps, and a VAE decoder.

    python examples/diffusers_dual_rate.py --out out/diffusers

exports the pair, validates it on ONNX Runtime and OpenVINO (fp32, every layer), converts it for
Core ML (structural checks; numerics need macOS), and writes decoded samples as a PNG. Exit 0
only when every target that can run here PASSED.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import dualrate as dr
from dualrate.exporter.progress import console
from diffusers_pair import build_pair


def declare(p) -> dr.DualRateModel:
    """Bind the diffusers modules' own forward parameters to roles."""
    return dr.DualRateModel(
        encoder=p.encoder, denoiser=p.denoiser,
        encoder_inputs={"sample": dr.SAMPLE, "controlnet_cond": dr.SAMPLE, "timestep": dr.TIME,
                        "encoder_hidden_states": dr.cond("text")},
        denoiser_inputs={"sample": dr.SAMPLE, "timestep": dr.TIME, "encoder_hidden_states": dr.cond("text"),
                         "encoder_attention_mask": dr.cond("text_mask"),
                         "down_block_additional_residuals": dr.features("down_block_res_samples.*"),
                         "mid_block_additional_residual": dr.feature("mid_block_res_sample")},
        sample_shape=p.latent_shape, prediction="eps", time="timestep", scheduler_config=p.scheduler_config,
        conditioning=[dr.Conditioning("text", (p.text_len, p.text_dim), null=p.null_text[0].numpy()),
                      dr.Conditioning("text_mask", (p.text_len,), null=p.null_mask[0].numpy())],
        decoder=dr.Decoder(p.vae, input="z", method="decode", scaling_factor=p.scaling_factor),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/diffusers"))
    ap.add_argument("--encoder-layers", type=int, default=2, help="transformer layers per ControlNet block")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--targets", default="onnxruntime,openvino,coreml")
    args = ap.parse_args(argv)

    p = build_pair(seed=0, encoder_layers=args.encoder_layers)
    model = declare(p)
    text, mask = p.make_text(4, seed=1)
    exported = dr.export(model, args.out / "bundle", steps=args.steps, sampler="ddim", refresh_every=3,
                         guidance=3.0, force=True, examples={"text": text.numpy(), "text_mask": mask.numpy()},
                         progress=console())
    for r in exported.parity:
        print(f"export parity {r.graph}/{r.output}: rel-L2 {r.metrics.rel_l2:.2e}")
    verdicts = {}
    for target in args.targets.split(","):
        options = {"model": model} if target == "coreml" else {}
        try:
            dr.compile(exported.bundle, target=target, **options)
        except dr.BackendUnavailableError as exc:
            verdicts[target] = f"NOT RUN ({exc})"
            continue
        report = dr.validate(exported.bundle, target=target, reference=model)
        report.save(args.out / f"report-{target}", data_range=(-1.0, 1.0))
        print(report.summary())
        verdicts[target] = report.verdict
    result = dr.sample(exported.bundle, target="onnxruntime", conditioning={"text": text.numpy(),
                                                                           "text_mask": mask.numpy()}, seed=0)
    from dualrate.validation.png import grid, to_uint8, write_png

    write_png(args.out / "decoded.png", grid(to_uint8(result.decoded, (-1.0, 1.0)), rows=1, scale=4))
    np.save(args.out / "decoded.npy", result.decoded)
    print(f"wrote {args.out / 'decoded.png'}: {len(result.decoded)} decoded samples "
          f"{list(result.decoded.shape[1:])}, encoder ran at steps {result.refresh_log['cond']}")
    print("verdicts: " + ", ".join(f"{t} {v}" for t, v in verdicts.items()))
    ran = [v for v in verdicts.values() if not v.startswith("NOT RUN")]
    return 0 if ran and all(v == "PASSED" for v in ran) else 1


if __name__ == "__main__":
    raise SystemExit(main())
