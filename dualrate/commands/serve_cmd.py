"""``dualrate serve``: a local page that samples a bundle in the browser (dualrate-js on ONNX Runtime Web).

Serves, on 127.0.0.1 only, the page and the JavaScript runtime from ``runtimes/js`` (``web/``,
``src/`` and ``node_modules/onnxruntime-web/dist/``, installed by ``npm ci`` there) and the bundle's
files under ``/bundle/`` (only what its manifest lists). Every response carries the
cross-origin isolation headers (COOP/COEP) that multi-threaded WASM needs. The bundle is verified
here before serving, and again, file by file, by the page itself.
"""

from __future__ import annotations

import argparse
import http.server
import socketserver
import sys
import threading
import urllib.parse
from pathlib import Path

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "runtimes" / "js"
ORT_WEB = "node_modules/onnxruntime-web/dist"
# URL prefix -> directory under the runtime folder
RUNTIME_MOUNTS = {"/web/": "web", "/src/": "src", f"/{ORT_WEB}/": ORT_WEB}
MIME = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
        ".json": "application/json", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
        ".npy": "application/octet-stream", ".npz": "application/octet-stream", ".png": "image/png",
        ".map": "application/json"}
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store",
                     "X-Content-Type-Options": "nosniff"}


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a page that samples BUNDLE in the browser (ONNX Runtime Web)",
                       description="Serve BUNDLE, the dualrate-js runtime and onnxruntime-web on 127.0.0.1 with the "
                                   "cross-origin isolation headers WASM threads need, and a page that verifies the "
                                   "bundle in the browser and samples a class grid with progress and per-graph "
                                   "timings. Query parameters: ?seed=S&n=N&classes=C,C (autorun=0 to wait for the "
                                   "button). Needs `npm ci` in runtimes/js.")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory (verified before serving)")
    p.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (default 8765; 0 picks a free one)")
    p.add_argument("--runtime", type=Path, default=None, metavar="DIR",
                   help=f"the dualrate-js package folder (default {RUNTIME_DIR})")
    p.set_defaults(handler=_serve)


def runtime_dir(given: Path | None) -> Path:
    """The runtime folder with its page, sources and an installed onnxruntime-web; BadInputError if not."""
    from dualrate.exporter.errors import BadInputError

    root = (given or RUNTIME_DIR).resolve()
    if not (root / "web" / "index.html").is_file() or not (root / "src" / "web.js").is_file():
        raise BadInputError(f"{root} is not the dualrate-js package (no web/index.html, src/web.js); "
                            "pass --runtime DIR pointing at runtimes/js of a dualrate checkout")
    if not (root / ORT_WEB / "ort.wasm.min.mjs").is_file():
        raise BadInputError(f"onnxruntime-web is not installed in {root}; run `npm ci` there first")
    return root


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(bundle_dir: Path, runtime: Path, port: int) -> http.server.HTTPServer:
    """An HTTP server on 127.0.0.1:port for an opened bundle's files and the runtime (not started)."""
    from dualrate.exporter.bundle import MANIFEST, open_bundle

    bundle = open_bundle(bundle_dir)
    bundle_files = {MANIFEST: bundle.path / MANIFEST,
                    **{rel: bundle.path / rel for rel in bundle.manifest["files"]}}
    mounts = {prefix: (runtime / sub).resolve() for prefix, sub in RUNTIME_MOUNTS.items()}

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "dualrate-serve"

        def log_message(self, fmt: str, *args) -> None:      # quiet: errors only
            if args and str(args[1])[:1] in "45":
                sys.stderr.write(f"dualrate serve: {self.command} {self.path} -> {args[1]}\n")

        def _resolve(self) -> Path | None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            if path in ("/", "/index.html"):
                return runtime / "web" / "index.html"
            if path.startswith("/bundle/"):
                return bundle_files.get(path[len("/bundle/"):])
            for prefix, root in mounts.items():
                if path.startswith(prefix):
                    target = (root / path[len(prefix):]).resolve()
                    if target.is_file() and target.is_relative_to(root):
                        return target
            return None

        def _send(self, body: bool) -> None:
            target = self._resolve()
            if target is None or not target.is_file():
                self.send_response(404)
                data = b"not found\n"
                self.send_header("Content-Type", "text/plain")
            else:
                data = target.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", MIME.get(target.suffix, "application/octet-stream"))
            for k, v in ISOLATION_HEADERS.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(True)

        def do_HEAD(self) -> None:
            self._send(False)

    return _Server(("127.0.0.1", port), Handler)


def _serve(args: argparse.Namespace) -> int:
    from dualrate.exporter.errors import BadInputError

    if not 0 <= args.port < 65536:
        raise BadInputError(f"--port {args.port}: expected 0..65535")
    runtime = runtime_dir(args.runtime)
    try:
        server = make_server(args.bundle, runtime, args.port)
    except OSError as exc:
        raise BadInputError(f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc})") from None
    host, port = server.server_address[:2]
    print(f"dualrate serve: {args.bundle} at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0
