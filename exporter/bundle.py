"""The bundle: the graphs + spec + golden vectors + a manifest that hashes every file.

Layout::

    manifest.json     format, versions, source (checkpoint or Python model) sha256, export options, sha256 of every file
    spec.json         the portable sampler spec
    encoder.onnx      (+ encoder.onnx.data for external weights)
    denoiser.onnx     (+ denoiser.onnx.data)
    decoder.onnx      only for a model with a decoder (a VAE decoder, say)
    conditioning/<name>.null.npy   stored null conditioning (an empty-prompt embedding, say)
    golden/*.npz      reference vectors (read with allow_pickle=False)
    targets/<backend>-<plan>/   compiled artifacts, each with its own compile.json (<plan>: ``int8``,
                                ``encoder-int8.denoiser-fp32``: ``PrecisionPlan.name``)
    calibration/<precision>.npz + .json   reduced-precision gate calibration, computed when first needed

Opening a bundle verifies every hash; a changed, missing or extra file is a
``BundleError`` and nothing runs on it. ``targets/`` is a compile cache that its
backend verifies against its own ``compile.json``; ``calibration/`` is verified against its
own records (``precision_calibration``). Neither is part of the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError, BundleError, SpecError
from .graph_checks import check_scans, is_graph_file, scan_graph
from .jsonio import read_json
from .spec import Spec

FORMAT = "dualrate-bundle"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SPEC = "spec.json"
TARGETS_DIR = "targets"
CALIBRATION_DIR = "calibration"
UNHASHED_DIRS = (TARGETS_DIR, CALIBRATION_DIR)     # caches with their own records, outside the manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _mapped(path: Path):
    """A read-only view of the file's bytes (memory-mapped: no copy on the heap)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b""
            return
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        try:
            yield view
        finally:
            try:
                view.release()
                mm.close()
            except BufferError:     # a view still held somewhere: the map goes when it does
                pass


def _payload_files(root: Path) -> list[str]:
    """Relative paths of every file that the manifest must cover."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() or rel == MANIFEST or rel.split("/")[0] in UNHASHED_DIRS:
            continue
        out.append(rel)
    return out


def write_manifest(root: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Hash every payload file under ``root`` and write ``manifest.json`` (sorted, deterministic)."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **info,
                "files": {rel: sha256_file(root / rel) for rel in _payload_files(root)}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    spec: Spec

    def graph(self, name: str) -> Path:
        return self.path / f"{name}.onnx"

    def file_hash(self, rel: str) -> str:
        return self.manifest["files"][rel]

    def golden(self, name: str) -> dict[str, np.ndarray]:
        path = self.path / "golden" / f"{name}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise BundleError(f"bundle {self.path}: golden/{name}.npz cannot be read ({exc})") from None

    def graph_names(self) -> list[str]:
        """The bundle's graphs: encoder, denoiser, and decoder where the model has one."""
        return list(self.spec.model.graphs())

    def nulls(self) -> dict[str, np.ndarray]:
        """The stored null conditioning tensors (guidance's unconditional branch), by input name."""
        out = {}
        for c in self.spec.model.conditioning:
            if c.null_kind != "file":
                continue
            try:
                arr = np.load(self.path / c.null_file, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise BundleError(f"bundle {self.path}: {c.null_file} cannot be read ({exc})") from None
            if tuple(arr.shape) != tuple(c.shape):
                raise BundleError(f"bundle {self.path}: {c.null_file} has shape {list(arr.shape)}; the spec declares "
                                  f"{list(c.shape)} for conditioning {c.name!r}. Re-export the bundle")
            out[c.name] = arr
        return out

    def golden_names(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "golden").glob("*.npz"))

    def target_dir(self, backend: str, precision: Any) -> Path:
        """The compile cache folder of ``backend`` at ``precision`` (a precision, a plan's ``name``, or a
        ``PrecisionPlan``)."""
        return self.path / TARGETS_DIR / f"{backend}-{getattr(precision, 'name', precision)}"


def open_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle: manifest, every hash, no missing or extra files, a valid spec."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {root} not found (expected a directory made by `dualrate export`)")
    manifest = read_json(root / MANIFEST, f"bundle {root}: {MANIFEST}", BundleError, missing=lambda: BundleError(
        f"bundle {root} has no {MANIFEST}; it is incomplete or not a bundle. Re-export it"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"bundle {root}: {MANIFEST} is not a {FORMAT} manifest")
    if type(manifest.get("format_version")) is not int or manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(f"bundle {root}: format_version {manifest.get('format_version')!r} is not supported "
                          f"(this dualrate reads {FORMAT_VERSION}); re-export with this version")
    listed = manifest["files"]
    for rel, digest in listed.items():
        if (not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)
                or rel.startswith("/") or ".." in rel.split("/")):
            raise BundleError(f"bundle {root}: {MANIFEST} entry {rel!r}: {digest!r} is not a relative path with a "
                              "sha256 hex digest; the manifest is corrupt. Re-export the bundle")
    present = set(_payload_files(root))
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    if missing:
        raise BundleError(f"bundle {root}: file(s) {missing} listed in the manifest are missing; re-export the bundle")
    if extra:
        raise BundleError(f"bundle {root}: file(s) {extra} are not in the manifest; remove them or re-export "
                          "(nothing runs on an unverified bundle)")
    scans = {}
    for rel, want in sorted(listed.items()):
        path = root / rel
        if path.is_symlink() or not path.is_file():
            # a link could point anywhere (or nowhere): bundles hold regular files only
            raise BundleError(f"bundle {root}: {rel} is not a regular file (a link or a directory); "
                              "re-export the bundle")
        # a graph is hashed and then checked from one mapping of the file: read from disk once
        try:
            with _mapped(path) if is_graph_file(rel) else contextlib.nullcontext() as data:
                got = sha256_file(path) if data is None else hashlib.sha256(data).hexdigest()
                if got == want and data is not None:
                    scans[rel] = scan_graph(root, rel, data)
        except OSError as exc:
            raise BundleError(f"bundle {root}: {rel} cannot be read ({exc})") from None
        if got != want:
            raise BundleError(f"bundle {root}: {rel} has sha256 {got[:12]}…, the manifest says {want[:12]}…; "
                              "the file was changed after export. Re-export the bundle")
    try:
        spec, _ = Spec.load(root / SPEC)
    except SpecError as exc:
        raise BundleError(f"bundle {root}: {exc}") from None
    for g in spec.model.graphs():
        if f"{g}.onnx" not in listed:
            raise BundleError(f"bundle {root}: the manifest lists no {g}.onnx, which the spec's model needs")
    for c in spec.model.conditioning:
        if c.null_kind == "file" and c.null_file not in listed:
            raise BundleError(f"bundle {root}: the manifest lists no {c.null_file} (the null value of conditioning "
                              f"{c.name!r}); re-export the bundle")
    # external data inside the bundle, domains, tensor sizes, I/O as the spec binds it (graph_checks)
    check_scans(root, spec, listed, scans)
    return Bundle(root, manifest, spec)


def recorded_checkpoint(bundle: Bundle, checkpoint: str | Path | None = None) -> Path | None:
    """``checkpoint`` if given, else the source checkpoint path the manifest records (may not exist)."""
    src = bundle.manifest.get("source_checkpoint") or {}
    return Path(checkpoint) if checkpoint else (Path(src["path"]) if src.get("path") else None)


def load_source_checkpoint(bundle: Bundle, checkpoint: str | Path | None, purpose: str,
                           allow_factory: bool = False, alternative: str = ""):
    """Load the checkpoint the bundle was exported from; BadInputError unless its sha256 matches.

    ``purpose`` says why the PyTorch modules are needed (it opens the errors); ``alternative``
    is appended to the advice, e.g. ", or use --reference golden".
    """
    from .checkpoint import load_checkpoint

    src = bundle.manifest.get("source_checkpoint") or {}
    want, name = src.get("sha256"), src.get("name", "the checkpoint it was exported from")
    if not want:
        raise BadInputError(f"bundle {bundle.path}: manifest.json records no source_checkpoint.sha256, so its "
                            f"checkpoint cannot be verified; re-export the bundle{alternative}")
    path = recorded_checkpoint(bundle, checkpoint)
    hint = f"pass checkpoint=PATH (CLI: --checkpoint PATH) pointing at {name} (sha256 {want[:12]}…){alternative}"
    if path is None:
        raise BadInputError(f"{purpose}, and bundle {bundle.path} does not record where its checkpoint is; {hint}")
    if not path.exists():
        where = "given" if checkpoint else "recorded in the bundle's manifest.json"
        raise BadInputError(f"{purpose}, but the checkpoint {where}, {path}, is not there; {hint}")
    ckpt = load_checkpoint(path, allow_factory=allow_factory)
    if ckpt.sha256 != want:
        raise BadInputError(f"checkpoint {path} has sha256 {ckpt.sha256[:12]}…, but bundle {bundle.path} was exported "
                            f"from {name} with sha256 {want[:12]}…; pass the checkpoint the bundle was exported "
                            f"from{alternative}, or re-export the bundle from this checkpoint")
    return ckpt
