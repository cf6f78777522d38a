"""Fixtures for the dualrate-js tests, made with the Python dualrate CLI (run in-process):

- ``digits/``: the shipped checkpoint exported as the README says
  (``dualrate export examples/checkpoints/dr-uvit-digits --steps 64 --refresh-every 8 --guidance 2``);
- ``digits-unguided/``: the same bundle with ``guidance.scale`` set to 1 in spec.json and the
  manifest re-hashed (guidance lives only in the spec, so this is what ``--guidance 1`` exports);
- ``golden/<prediction>/``: ``dualrate golden`` vectors for the bundle's spec (prediction v) and for
  copies of it predicting eps and x0 (the x0 one with a seed above 2^53);
- ``refs/*.npy``: ``dualrate sample BUNDLE --target onnxruntime ... -o FILE.npy`` per live case;
- ``fixtures.json``: the cases, for the JavaScript tests.

Usage: python prepare_fixtures.py OUT_DIR. Re-runs are free while the stamp (this script, the
checkpoint, dualrate's sources, onnxruntime's version) is unchanged; concurrent runs wait on a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
CHECKPOINT = REPO / "examples" / "checkpoints" / "dr-uvit-digits"
EXPORT_ARGS = ["--steps", "64", "--refresh-every", "8", "--guidance", "2"]
BIG_SEED = 0xFEDCBA9876543210            # > 2^53: JSON readers must not go through a double
LIVE_CASES = [
    # bundle, seed, classes, n: guidance on and off, several seeds and classes, a seed above 2^53
    {"name": "guided-s0-grid", "bundle": "digits", "seed": 0, "classes": list(range(10)), "n": 1},
    {"name": "guided-s7-c38", "bundle": "digits", "seed": 7, "classes": [3, 8], "n": 2},
    {"name": "unguided-s0-grid", "bundle": "digits-unguided", "seed": 0, "classes": list(range(10)), "n": 1},
    {"name": "unguided-bigseed-c5", "bundle": "digits-unguided", "seed": 2 ** 60 + 12345, "classes": [5], "n": 3},
    # conditioning given as a file (--conditioning FILE.npz): class ids 2 and 6, two samples each
    {"name": "guided-s11-npz", "bundle": "digits", "seed": 11, "conditioning": {"class_id": [2, 6]}, "n": 2},
]


def stamp() -> str:
    """What the fixtures depend on: this script, the checkpoint, dualrate's Python sources, ONNX Runtime."""
    import onnxruntime

    h = hashlib.sha256(Path(__file__).read_bytes())
    for p in sorted(CHECKPOINT.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    for folder in ("dualrate", "exporter", "targets", "validation"):
        for p in sorted((REPO / folder).rglob("*.py")):
            h.update(str(p.relative_to(REPO)).encode() + p.read_bytes())
    h.update(f"onnxruntime {onnxruntime.__version__}".encode())
    return h.hexdigest()


def cli(*args: str) -> None:
    from dualrate.cli import main

    t0 = time.perf_counter()
    rc = main([str(a) for a in args])
    if rc != 0:
        raise SystemExit(f"prepare_fixtures: `dualrate {' '.join(map(str, args))}` exited {rc}")
    print(f"  dualrate {args[0]} ... {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def rewrite_spec(bundle: Path, edit) -> None:
    """Edit a bundle's spec.json in place and re-hash its manifest (the spec is checked on load)."""
    from dualrate.exporter.bundle import MANIFEST, open_bundle, write_manifest
    from dualrate.exporter.spec import Spec

    spec = json.loads((bundle / "spec.json").read_text())
    edit(spec)
    Spec.from_dict(spec)                                    # still a valid spec
    (bundle / "spec.json").write_text(json.dumps(spec, sort_keys=True, indent=1) + "\n")
    manifest = json.loads((bundle / MANIFEST).read_text())
    info = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")}
    write_manifest(bundle, info)
    open_bundle(bundle)


def build(out: Path) -> None:
    import numpy as np

    out.mkdir(parents=True)
    digits = out / "digits"
    cli("export", CHECKPOINT, "-o", digits, *EXPORT_ARGS)
    unguided = out / "digits-unguided"
    shutil.copytree(digits, unguided, ignore=shutil.ignore_patterns("targets"))

    def no_guidance(spec: dict) -> None:
        spec["guidance"]["scale"] = 1.0

    rewrite_spec(unguided, no_guidance)
    specs = out / "specs"
    specs.mkdir()
    for pred, seed in (("v", None), ("eps", None), ("x0", BIG_SEED)):
        spec = json.loads((digits / "spec.json").read_text())
        spec["model"]["prediction"] = pred
        (specs / f"{pred}.json").write_text(json.dumps(spec, sort_keys=True, indent=1) + "\n")
        cli("golden", specs / f"{pred}.json", "-o", out / "golden" / pred, *(["--seed", seed] if seed else []))
    refs = out / "refs"
    refs.mkdir()
    cases = []
    for case in LIVE_CASES:
        args = ["sample", out / case["bundle"], "--target", "onnxruntime", "-n", case["n"], "--seed", case["seed"]]
        if "conditioning" in case:
            npz = refs / f"{case['name']}.npz"
            np.savez(npz, **{k: np.asarray(v, np.int64) for k, v in case["conditioning"].items()})
            args += ["--conditioning", npz]
            case = {**case, "conditioning_file": str(npz.relative_to(out))}
        else:
            args += ["--class", ",".join(map(str, case["classes"]))]
        ref = refs / f"{case['name']}.npy"
        t0 = time.perf_counter()
        cli(*args, "-o", ref)
        cases.append({**case, "seed": str(case["seed"]), "ref": str(ref.relative_to(out)),
                      "python_seconds": round(time.perf_counter() - t0, 3)})
    (out / "fixtures.json").write_text(json.dumps({"cases": cases, "golden": ["v", "eps", "x0"],
                                                   "big_seed": str(BIG_SEED)}, indent=1) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        want = stamp()
        stamp_file = out / "STAMP"
        if stamp_file.is_file() and stamp_file.read_text().strip() == want:
            return 0
        t0 = time.perf_counter()
        if out.exists():
            shutil.rmtree(out)
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        build(tmp)
        (tmp / "STAMP").write_text(want + "\n")
        tmp.rename(out)
        print(f"prepare_fixtures: wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main(sys.argv[1:]))
