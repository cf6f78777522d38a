"""Concurrent exports and validations leave correct results and no corrupted caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dualrate.exporter.bundle import open_bundle
from dualrate.targets.base import get_target
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _start(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "dualrate", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_exports_at_once(tiny_checkpoint, tmp_path):
    procs = [_start("export", str(tiny_checkpoint), "-o", str(tmp_path / f"b{i}"), "--steps", "4", "--guidance", "2")
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    a, b = (open_bundle(tmp_path / f"b{i}") for i in range(2))
    assert a.manifest["files"] == b.manifest["files"]          # same content, both complete
    assert a.manifest["source"] == b.manifest["source"] and a.manifest["source"]["kind"] == "checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0", "b1"]   # no staging leftovers


def test_two_validations_of_one_bundle_at_once(tiny_bundle, tmp_path):
    import shutil
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, bundle, ignore=shutil.ignore_patterns("targets"))   # cold compile cache
    procs = [_start("validate", str(bundle), "--target", "onnxruntime", "--reference", "golden",
                    "--json", str(tmp_path / f"r{i}.json")) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for i in range(2):
        assert json.loads((tmp_path / f"r{i}.json").read_text())["verdict"] == "PASSED"
    targets = bundle / "targets"
    assert sorted(p.name for p in targets.iterdir()) == ["onnxruntime-fp32"]   # one cache, no partials
    cached = get_target("onnxruntime").compile(open_bundle(bundle))     # verifies every cached hash
    assert cached.record["requested_precision"] == "fp32"
