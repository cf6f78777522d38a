"""Shared fixtures: a seeded ``tiny`` pair, its checkpoint on disk, and spec helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# as the CLI does (dualrate.cli.quiet_openmp): OpenMP threads sleep at barriers instead of spinning,
# which on a busy machine (tests run in parallel with other work) is several times faster
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from dualrate.exporter.checkpoint import make_config, save_checkpoint
from dualrate.exporter.model_config import preset
from dualrate.exporter.export import spec_for_model
from dualrate.exporter.model_pair import build_pair
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.exporter.torch_runner import TorchReferenceRunner

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "examples" / "checkpoints" / "dr-uvit-digits"


def tiny_pair(seed: int = 0):
    torch.manual_seed(seed)
    pair = build_pair({"family": "dr-uvit", **preset("tiny").to_dict()})
    # adaLN-zero and the zero head make a fresh pair output constants; perturb so
    # every parameter matters to the tests.
    with torch.no_grad():
        for p in list(pair.encoder.parameters()) + list(pair.denoiser.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return pair.eval()


def tiny_spec(pair, **opts):
    return spec_for_model(pair, SamplerOptions(**opts), {})


@pytest.fixture(scope="session")
def pair():
    return tiny_pair()


@pytest.fixture(scope="session")
def runner(pair):
    """The reference runner of the tiny pair under a default spec (graph signatures do not depend on it)."""
    return TorchReferenceRunner(pair, tiny_spec(pair))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, pair):
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(pair, make_config({"family": "dr-uvit", **preset("tiny").to_dict()}), out)
    return out


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``dualrate`` entry point in a subprocess (exit codes, stderr, no traceback)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dualrate", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=600)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint):
    """A guided, dual-rate tiny bundle shared by tests that only read it (compile caches go inside)."""
    from dualrate.exporter.export import ExportOptions
    from dualrate.validation.export_check import export_bundle

    out = tmp_path_factory.mktemp("shared") / "bundle"
    opts = ExportOptions(sampler=SamplerOptions(num_steps=8, guidance=2.0, refresh_params={"k": 3, "phase": 0}))
    return export_bundle(tiny_checkpoint, out, opts).bundle
