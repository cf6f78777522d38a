"""``pip install dualrate`` without PyTorch runs bundles: open, compile, sample, validate against
golden vectors, doctor; export and ``--reference torch`` name the extra they need (exit 2).

A fresh venv gets ``pip install REPO[openvino]`` (no torch: it is in the ``export`` extra) and the
real ``dualrate`` entry point runs there on a bundle exported by this suite's environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def light(tmp_path_factory, tiny_bundle, tiny_checkpoint):
    root = tmp_path_factory.mktemp("no-torch")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    py = root / "venv" / "bin" / "python"
    # build from a copy: a PEP 517 build writes build/ and *.egg-info beside the sources
    src = root / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "node_modules", "out", "build",
                                                             "*.egg-info", "__pycache__", "targets", "runs"))
    shutil.copytree(REPO / "targets", src / "targets", ignore=shutil.ignore_patterns("__pycache__"))
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[openvino]"], capture_output=True,
                             text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-2000:]
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle.path, bundle, ignore=shutil.ignore_patterns("targets"))
    return root / "venv" / "bin" / "dualrate", py, bundle, tiny_checkpoint


def run(exe, *args):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=600, cwd="/")


def test_the_light_install_has_no_torch(light):
    _, py, _, _ = light
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "None"
    site = subprocess.run([str(py), "-c", "import dualrate, sys; print(dualrate.__file__)"], capture_output=True, cwd="/",
                          text=True)
    assert "site-packages/dualrate/" in site.stdout          # the installed package, not the checkout


def test_compile_sample_validate_golden_and_doctor_run_without_torch(light, tmp_path):
    exe, _, bundle, _ = light
    for target in ("onnxruntime", "openvino"):
        r = run(exe, "compile", bundle, "--target", target)
        assert r.returncode == 0, r.stderr
        r = run(exe, "validate", bundle, "--target", target, "--reference", "golden", "--json", tmp_path / f"{target}.json",
                "--report", tmp_path / f"report-{target}")
        assert r.returncode == 0 and r.stdout.strip().endswith("PASSED"), r.stdout + r.stderr
        # the installed package carries its report templates (jinja2, matplotlib, Pillow are core dependencies)
        assert "<svg" in (tmp_path / f"report-{target}" / "report.html").read_text()
    r = run(exe, "report", "merge", tmp_path / "onnxruntime.json", tmp_path / "openvino.json", "-o", tmp_path / "m")
    assert r.returncode == 0 and (tmp_path / "m" / "matrix.html").is_file(), r.stdout + r.stderr
    r = run(exe, "sample", bundle, "--class", "1,2", "-n", "2", "-o", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    r = run(exe, "doctor")
    assert r.returncode == 0 and "torch not installed" in r.stdout, r.stdout + r.stderr
    assert "onnxruntime" in r.stdout and "Traceback" not in r.stderr


def test_verbs_that_need_torch_name_the_extra(light, tmp_path):
    exe, _, bundle, checkpoint = light
    for args in (("export", checkpoint, "-o", tmp_path / "b"),
                 ("validate", bundle, "--target", "onnxruntime", "--reference", "torch", "--checkpoint", checkpoint),
                 ("sample", checkpoint, "-o", tmp_path / "g.png"),
                 ("init", "--config", "tiny", "-o", tmp_path / "ck")):
        r = run(exe, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "pip install 'dualrate[export]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
        # stage lines (CI logs) may precede it; the error is one line, the last
        lines = r.stderr.strip().splitlines()
        assert [line for line in lines if "error:" in line] == [lines[-1]]
    assert not (tmp_path / "b").exists() and not (tmp_path / "ck").exists()
