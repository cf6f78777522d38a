"""Checkpoint loading and saving, without ever executing pickled code.

Formats:

* a directory holding ``config.json`` and ``model.safetensors`` (preferred);
* a ``.pt``/``.pth`` file read with ``torch.load(weights_only=True)``, holding either
  ``{"config": {...}, "state_dict": {...}}`` or a bare state dict with a
  ``config.json`` beside it (or a preset named by the caller).

The state dict is flat with keys prefixed ``encoder.`` and ``denoiser.``.
Every mismatch is named: missing and unexpected keys, shapes (both shown),
non-finite tensors, unknown config fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .atomic import atomic_directory
from .errors import CheckpointError
from .jsonio import read_json
from .model_config import preset
from .model_pair import DualRatePair, build_pair

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "dualrate-checkpoint"
FORMAT_VERSION = 1


@dataclass
class LoadedCheckpoint:
    pair: DualRatePair
    config: dict[str, Any]          # the whole config.json content
    sha256: str                     # hash over the files that define the checkpoint
    path: Path

    def source(self) -> dict[str, Any]:
        """Where a bundle exported from this checkpoint came from (the manifest's ``source``)."""
        return {"kind": "checkpoint", "name": self.path.name, "sha256": self.sha256, "path": str(self.path.resolve())}


def sha256_files(paths: list[Path]) -> str:
    """sha256 over the concatenated bytes of ``paths`` (in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def make_config(model: Mapping[str, Any], training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": dict(model)}
    if training:
        cfg["training"] = dict(training)
    return cfg


def save_checkpoint(pair: DualRatePair, config: Mapping[str, Any], out_dir: Path, force: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in pair.state_dict().items()}
    with atomic_directory(Path(out_dir), force=force) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        os.chmod(tmp / WEIGHTS_NAME, 0o644)   # safetensors creates 0600; a checkpoint is meant to be shared
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint config {path} not found; a checkpoint directory needs {CONFIG_NAME} "
                              f"and {WEIGHTS_NAME}")
    return _check_config(read_json(path, f"checkpoint config {path}", CheckpointError), str(path))


def _check_config(cfg: Any, where: str) -> dict[str, Any]:
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{where}: expected a JSON object with a 'model' section")
    if cfg.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"{where}: format is {cfg.get('format')!r}; expected {FORMAT!r}")
    version = cfg.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {version!r} is newer than this dualrate understands "
                              f"({FORMAT_VERSION}); upgrade dualrate")
    unknown = sorted(set(cfg) - {"format", "format_version", "model", "training"})
    if unknown:
        raise CheckpointError(f"{where}: unknown top-level field(s) {unknown}; expected format, format_version, "
                              "model, training")
    return cfg


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint weights {path} is empty (0 bytes); the file was not written completely")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint weights {path} are truncated or corrupt ({exc}); re-download or "
                              "re-export the checkpoint") from None


def _load_torch_file(path: Path) -> Any:
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        # weights_only: the unpickler only rebuilds tensors and plain containers
        # and refuses any other global, so no code in the file can run.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise CheckpointError(
            f"checkpoint {path} contains pickled objects other than tensors ({first}); dualrate never executes "
            "pickled code. Save a plain state dict, or convert to safetensors.") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); re-create it") from None


def load_checkpoint(path: str | Path, allow_factory: bool = False, config_name: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint, validate it against its config, return the pair in eval mode."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass a directory with {CONFIG_NAME} + {WEIGHTS_NAME} "
                              "or a .pt/.pth state dict")
    if path.is_dir():
        cfg = _read_config(path / CONFIG_NAME)
        state = _load_safetensors(path / WEIGHTS_NAME)
        digest = sha256_files([path / CONFIG_NAME, path / WEIGHTS_NAME])
    elif path.suffix in (".pt", ".pth", ".bin"):
        obj = _load_torch_file(path)
        digest = sha256_files([path])
        if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
            cfg = _check_config(obj["config"], str(path))
            state = obj.get("state_dict", obj.get("model"))
        else:
            state = obj
            if config_name:
                cfg = make_config({"family": "dr-uvit", **preset(config_name).to_dict()})
            else:
                cfg = _read_config(path.parent / CONFIG_NAME)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    elif path.suffix == ".safetensors":
        state = _load_safetensors(path)
        cfg = (make_config({"family": "dr-uvit", **preset(config_name).to_dict()}) if config_name
               else _read_config(path.parent / CONFIG_NAME))
        digest = sha256_files([path])
    else:
        raise CheckpointError(f"checkpoint {path}: unsupported file type {path.suffix!r}; use a checkpoint "
                              "directory, .safetensors, .pt or .pth")
    pair = build_pair(cfg["model"], allow_factory=allow_factory, where=str(path))
    _load_state(pair, state, str(path))
    return LoadedCheckpoint(pair.eval(), cfg, digest, path)


def _load_state(pair: DualRatePair, state: Mapping[str, torch.Tensor], where: str) -> None:
    expected = pair.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]) + (f" (+{len(shapes) - 5} more)" if len(shapes) > 5 else ""))
    if problems:
        raise CheckpointError(f"checkpoint {where} does not match its config: " + "; ".join(problems)
                              + ". Check that config.json describes the model these weights came from.")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"checkpoint {where} has non-finite (NaN/Inf) values in {_short(sorted(bad))}; "
                              "the training run diverged or the file is damaged")
    for graph, module in pair.modules().items():
        prefix = f"{graph}."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict({k: v.to(dtype=module.state_dict()[k].dtype) for k, v in sub.items()}, strict=True)


def _short(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")
