"""The JavaScript runtime (runtimes/js, dualrate-js) through its own test suites (``node --test``).

Fixtures come from this Python package (runtimes/js/test/helpers/prepare_fixtures.py): the shipped
digits checkpoint exported as the README says, ``dualrate golden`` vectors, and ``dualrate sample``
references. Each node suite then runs as one test here, so a failing JavaScript test fails pytest:

- philox:    Random123 known answers for Philox4x32-10, the limb multiply, the seed and counter rules;
- npy:       .npy / .npz reading and writing (stored and deflated members);
- golden:    every ``dualrate golden`` variant (predictions v, eps, x0) replayed in Node.js;
- live:      ``dualrate-js sample`` (onnxruntime-node) vs ``dualrate sample`` at PSNR >= 60 dB;
- bad-input: tampered / future-version / missing-graph bundles, wrong-shape conditioning;
- browser:   the same in headless Chromium (onnxruntime-web, WASM), served on 127.0.0.1;
- page:      ``dualrate serve``'s page, checked by a screenshot and by reading its samples back;
- types:     the JSDoc types (``tsc --checkJs``).

Skipped only when Node.js is not installed. ``tests/run.sh`` installs the npm packages (``npm ci``
in runtimes/js) and Debian's chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JS = REPO / "runtimes" / "js"
FIXTURES = JS / ".fixtures"
NODE = shutil.which("node")
SUITES = {"philox": "test/node/philox.test.js", "npy": "test/node/npy.test.js", "golden": "test/node/golden.test.js",
          "live": "test/node/live.test.js", "bad-input": "test/node/bad-input.test.js",
          "browser": "test/browser/browser.test.js", "page": "test/browser/page.test.js"}

needs_node = pytest.mark.skipif(NODE is None, reason="Node.js (node >= 20) is not installed; the JavaScript runtime "
                                                     "(runtimes/js) cannot be tested here")


def _env() -> dict[str, str]:
    return dict(os.environ, DUALRATE_PYTHON=sys.executable, DUALRATE_JS_FIXTURES=str(FIXTURES),
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def fixtures() -> Path:
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(re.match(r"v(\d+)", version).group(1)) < 20:
        pytest.fail(f"node {version} is too old: dualrate-js needs Node.js >= 20 (WebCrypto, node --test)")
    if not (JS / "node_modules" / "onnxruntime-node").is_dir() or not (JS / "node_modules" / "onnxruntime-web").is_dir():
        pytest.fail("runtimes/js has no node_modules: run `npm ci` in runtimes/js (tests/run.sh does)")
    res = subprocess.run([sys.executable, str(JS / "test" / "helpers" / "prepare_fixtures.py"), str(FIXTURES)],
                         capture_output=True, text=True, env=_env(), timeout=1200)
    if res.returncode != 0:
        pytest.fail(f"preparing the JavaScript test fixtures failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return FIXTURES


@needs_node
@pytest.mark.parametrize("suite", list(SUITES))
def test_js_suite(suite: str, fixtures: Path) -> None:
    res = subprocess.run([NODE, "--test", "--test-reporter=tap", SUITES[suite]], cwd=JS, capture_output=True,
                         text=True, env=_env(), timeout=900)
    # the diagnostics carry the measured numbers (PSNR, golden error vs tolerance, timings)
    counts = re.compile(r"# (Subtest|tests|suites|pass|fail|cancelled|skipped|todo|duration_ms)\b")
    notes = [line[2:] for line in res.stdout.splitlines() if line.startswith("# ") and not counts.match(line)]
    print("\n".join(notes))
    if res.returncode != 0:
        failed = [line for line in res.stdout.splitlines() if line.lstrip().startswith("not ok")]
        pytest.fail(f"node --test {SUITES[suite]} failed (exit {res.returncode}): {failed}\n"
                    f"{res.stdout[-6000:]}\n{res.stderr[-3000:]}", pytrace=False)


@needs_node
def test_js_types() -> None:
    """The runtime's JSDoc types check (tsc --checkJs over src/ and bin/)."""
    tsc = JS / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.is_file():
        pytest.fail("runtimes/js has no node_modules/typescript: run `npm ci` in runtimes/js (tests/run.sh does)")
    res = subprocess.run([NODE, str(tsc), "-p", "jsconfig.json"], cwd=JS, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"tsc -p jsconfig.json:\n{res.stdout[-4000:]}{res.stderr[-2000:]}"


@needs_node
def test_js_results_recorded(fixtures: Path) -> None:
    """The live suites wrote their measured PSNRs; every one meets the 60 dB gate."""
    results = fixtures / "results"
    for name in ("live-node", "live-browser"):
        path = results / f"{name}.json"
        if not path.is_file():
            pytest.skip(f"{path} not written (its suite did not run)")
        for case in json.loads(path.read_text()):
            psnr = math_inf(case["psnr_db"])
            assert psnr >= 60.0, f"{name} {case['case']}: PSNR {psnr} dB"


def math_inf(value) -> float:
    return float("inf") if value == "inf" else float(value)


# -- dualrate serve (no Node.js needed: a stand-in runtime folder) -----------------------------

def _fake_runtime(root: Path) -> Path:
    for rel, text in {"web/index.html": "<!doctype html>page", "src/web.js": "export {};",
                      "node_modules/onnxruntime-web/dist/ort.wasm.min.mjs": "export {};",
                      "node_modules/onnxruntime-web/package.json": "{}", "package.json": "{}"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_serve_serves_listed_files_with_isolation_headers(tmp_path, tiny_bundle):
    import threading
    import urllib.error
    import urllib.request

    from dualrate.commands.serve_cmd import make_server, runtime_dir

    runtime = runtime_dir(_fake_runtime(tmp_path / "js"))
    bundle = tmp_path / "bundle"                  # a copy: the shared bundle stays untouched
    shutil.copytree(tiny_bundle.path, bundle, ignore=shutil.ignore_patterns("targets"))
    (bundle / "targets").mkdir()
    (bundle / "targets" / "secret.txt").write_text("a compile cache is not served")
    server = make_server(bundle, runtime, 0)
    assert server.server_address[0] == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def get(path: str):
        try:
            with urllib.request.urlopen(base + path) as res:
                return res.status, dict(res.headers), res.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), b""

    try:
        status, headers, body = get("/")
        assert status == 200 and body == b"<!doctype html>page" and headers["Content-Type"].startswith("text/html")
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        status, headers, body = get("/bundle/spec.json")
        assert status == 200 and body == (bundle / "spec.json").read_bytes()
        assert get("/bundle/manifest.json")[0] == 200
        assert get("/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs")[1]["Content-Type"].startswith("text/javascript")
        for path in ("/bundle/targets/secret.txt", "/src/%2e%2e/package.json", "/node_modules/onnxruntime-web/package.json",
                     "/package.json", "/bundle/../spec.json"):
            assert get(path)[0] == 404, path
    finally:
        server.shutdown()
        server.server_close()


def test_serve_refuses_bad_input(tmp_path):
    from dualrate.commands.serve_cmd import runtime_dir
    from dualrate.exporter.errors import BadInputError
    from tests.conftest import run_cli

    with pytest.raises(BadInputError, match="not the dualrate-js package"):
        runtime_dir(tmp_path)
    runtime = _fake_runtime(tmp_path / "js")
    (runtime / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs").unlink()
    with pytest.raises(BadInputError, match="run `npm ci` there"):
        runtime_dir(runtime)
    res = run_cli("serve", str(tmp_path / "missing"), "--runtime", str(_fake_runtime(tmp_path / "js2")), "--port", "0")
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr
