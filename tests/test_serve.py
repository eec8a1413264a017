"""`maskrt serve`: a real Triton Inference Server (PyTriton) on loopback, driven by tritonclient.

The server runs from the serving venv (.venv-serve, made by `make test`; PyTriton pins numpy < 2 and needs a Python
with a shared libpython), the client and `maskrt predict` from this one. One server serves the whole module; the
last test stops it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_util import (
    Server,
    free_ports,
    huge_png,
    kill_tree,
    rss_mib,
    serve_python,
    start_server,
    stop_and_check,
    tree,
    write_images,
)

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "maskrt.cli"]
THRESHOLD = "0.1"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A random-init slim model (100 detections per image) exported with a dynamic batch, three images of different
    sizes and formats, and `maskrt serve` on it."""
    from maskrt.runtime.bench.compare import random_checkpoint

    serve_python()
    root = tmp_path_factory.mktemp("serve")
    ckpt = random_checkpoint(root / "ckpt.pt", "slim")
    export = root / "export"
    subprocess.run([*CLI, "export", "--checkpoint", str(ckpt), "--out", str(export), "--dynamic-batch"],
                   check=True, capture_output=True)
    images = write_images(root / "images")
    server = start_server(["--model", str(export), "--score-threshold", THRESHOLD, "--threads", "1"], free_ports(3))
    server.root, server.export, server.images = root, export, images  # type: ignore[attr-defined]
    yield server
    kill_tree(server)


def client(url: str):  # noqa: ANN201
    from maskrt.serving.client import Client

    return Client(url)


def predict_results(server: Server, tmp_path: Path, *options: str) -> dict[str, list[dict]]:
    """`maskrt predict` (with `options`) on the served export and images: results per image name, without the file
    fields."""
    out = tmp_path / "pred"
    subprocess.run([*CLI, "predict", "--model", str(server.export), "--score-threshold", THRESHOLD, *options, "--out",
                    str(out), "-q", str(server.images)], check=True, capture_output=True)
    per: dict[str, list[dict]] = {}
    for r in json.loads((out / "results.json").read_text()):
        name = Path(r.pop("file_name")).name
        for key in ("image_id", "overlay"):
            r.pop(key)
        per.setdefault(name, []).append(r)
    return per


def test_one_request_equals_predict(served: Server, tmp_path: Path) -> None:
    expected = predict_results(served, tmp_path)
    files = sorted(served.images.iterdir())
    assert all(expected.get(f.name) for f in files), "the model detects on every test image"
    for url in (served.http, served.grpc):
        with client(url) as c:
            assert c.ready()
            for f in files:
                got = c.detect([f.read_bytes()])[0]
                assert got == expected[f.name], f"{url} {f.name}: differs from maskrt predict"
            # one request holding all three images (different sizes) answers each as alone
            assert c.detect([f.read_bytes() for f in files]) == [expected[f.name] for f in files]


def test_load_200_requests_concurrency_8(served: Server, tmp_path: Path) -> None:
    expected = predict_results(served, tmp_path)
    files = sorted(served.images.iterdir())
    blobs = [f.read_bytes() for f in files]
    server_pids = tree(served.proc.pid)
    assert len(server_pids) >= 3, f"maskrt serve, tritonserver and the python backend stub: {server_pids}"
    local = threading.local()

    def one(i: int) -> tuple[int, float, list[dict]]:
        if not hasattr(local, "client"):
            local.client = client(served.http if i % 2 == 0 else served.grpc)
        t0 = time.perf_counter()
        got = local.client.detect([blobs[i % len(blobs)]])[0]
        return i, time.perf_counter() - t0, got

    # warm-up: each image size at the largest batch (8 images in one request run as one batch), then the same
    # traffic as the load, so the allocations the load can need have been made once
    with client(served.http) as c:
        for b in blobs:
            assert c.detect([b] * 8) == [c.detect([b])[0]] * 8  # one request's images answer as if each were alone
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(100)))
    warm = rss_mib(tree(served.proc.pid))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(one, range(200)))
    wall = time.perf_counter() - t0
    after = rss_mib(tree(served.proc.pid))
    wrong = [i for i, _, got in done if got != expected[files[i % len(files)].name]]
    assert not wrong, f"{len(wrong)} of 200 responses differ from maskrt predict (requests {wrong[:10]})"
    ms = np.array([t for _, t, _ in done]) * 1e3
    print(f"\nserve load: 200 requests, concurrency 8, HTTP+gRPC: p50 {np.percentile(ms, 50):.1f} ms, p99 "
          f"{np.percentile(ms, 99):.1f} ms, {200 / wall:.1f} requests/s; server memory {warm:.0f} MiB after warm-up, "
          f"{after:.0f} MiB after the load ({(after / warm - 1) * 100:+.1f}%)")
    assert after <= warm * 1.10, f"server memory grew from {warm:.0f} to {after:.0f} MiB under load"


def _infer_raw(url: str, array: np.ndarray, dtype: str) -> None:
    """Send `array` as the image input with Triton type `dtype`, bypassing the client's own checks."""
    c = client(url)
    try:
        tensor = c._lib.InferInput("image", list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        c.infer_raw([tensor])
    finally:
        c.close()


@pytest.mark.parametrize("url_kind", ["http", "grpc"])
def test_malformed_requests_get_errors_and_the_server_keeps_serving(served: Server, url_kind: str) -> None:
    from maskrt.serving.client import ServerError

    url = served.http if url_kind == "http" else served.grpc
    good = sorted(served.images.iterdir())[0].read_bytes()
    cases = {
        "wrong dtype (UINT8 pixels, not encoded bytes)": (np.zeros((1, 1), np.uint8), "UINT8", "data-type"),
        "wrong shape [1, 2]": (np.array([[good, good]], dtype=np.object_), "BYTES", "shape"),
        "non-image bytes": (np.array([[b"this is not an image"]], dtype=np.object_), "BYTES", "not an image"),
        "empty image bytes": (np.array([[b""]], dtype=np.object_), "BYTES", "empty"),
        "empty batch": (np.zeros((0, 1), dtype=np.object_), "BYTES", ""),
        "20000x20000 image": (np.array([[huge_png(20000, 20000)]], dtype=np.object_), "BYTES", "megapixels"),
    }
    with client(url) as c:
        for what, (array, dtype, fragment) in cases.items():
            with pytest.raises(ServerError) as err:
                _infer_raw(url, array, dtype)
            print(f"{url_kind} {what}: {err.value}")
            assert fragment.lower() in str(err.value).lower(), f"{what}: {err.value}"
            assert "Traceback" not in str(err.value) and "\n" not in str(err.value), f"{what}: one line: {err.value}"
            assert c.detect([good])[0], f"the server stopped serving after: {what}"
    assert served.proc.poll() is None


def test_health_and_metrics(served: Server) -> None:
    import urllib.request

    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/maskrt/ready"):
        with urllib.request.urlopen(served.http + path, timeout=10) as r:
            assert r.status == 200, path
    with urllib.request.urlopen(served.metrics, timeout=10) as r:
        text = r.read().decode()
    success = [line for line in text.splitlines() if line.startswith('nv_inference_request_success{model="maskrt"')]
    assert success and float(success[0].split()[-1]) >= 1, "Triton counts the requests it served"


def test_bench_through_the_server(served: Server) -> None:
    proc = subprocess.run([*CLI, "bench", "server", "--server", served.http, "--images", str(served.images),
                           "--iters", "6", "--warmup", "1", "--concurrency", "2", "--model", str(served.export), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "through the server" in proc.stdout and "in process" in proc.stdout, proc.stdout
    assert "serving overhead" in proc.stdout, proc.stdout


def test_a_taken_port_is_one_clear_error(served: Server) -> None:
    proc = subprocess.run([str(serve_python()), "-m", "maskrt.cli", "serve", "--model", str(served.export), "--port",
                           str(served.port + 1)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"127.0.0.1:{served.port + 1} (HTTP) is not free" in proc.stderr and "Traceback" not in proc.stderr
    assert served.proc.poll() is None


def _second_server_answers(served: Server, args: list[str], backend: str, expected: dict[str, list[dict]]) -> None:
    """A second `maskrt serve ARGS` beside the first, on its own ports, runs `backend` and answers each image with
    `expected`; it stops cleanly."""
    server = start_server(args, free_ports(3))
    try:
        assert backend in server.lines[-1], server.lines
        with client(server.grpc) as c:
            for f in sorted(served.images.iterdir()):
                assert c.detect([f.read_bytes()])[0] == expected[f.name], f.name
        stop_and_check(server)
    finally:
        kill_tree(server)


def test_serve_a_checkpoint_with_the_torch_backend(served: Server, tmp_path: Path) -> None:
    """`maskrt serve --model CKPT` (the torch backend, chosen from the file: plain torchvision on each image) answers
    as `maskrt predict --backend torch`; a second server beside the first, on its own ports."""
    ckpt = served.root / "ckpt.pt"
    out = tmp_path / "pred"
    subprocess.run([*CLI, "predict", "--backend", "torch", "--model", str(ckpt), "--score-threshold", THRESHOLD,
                    "--out", str(out), "-q", str(served.images)], check=True, capture_output=True)
    expected: dict[str, list[dict]] = {}
    for r in json.loads((out / "results.json").read_text()):
        name = Path(r.pop("file_name")).name
        r.pop("image_id"), r.pop("overlay")
        expected.setdefault(name, []).append(r)
    _second_server_answers(served, ["--model", str(ckpt), "--score-threshold", THRESHOLD], "(torch)", expected)


def test_serve_with_the_openvino_backend(served: Server, tmp_path: Path) -> None:
    """`maskrt serve --backend openvino` (issue 23) answers as `maskrt predict --backend openvino`."""
    options = ["--backend", "openvino", "--precision", "f32", "--threads", "1"]
    expected = predict_results(served, tmp_path, *options)
    _second_server_answers(served, ["--model", str(served.export), *options, "--score-threshold", THRESHOLD],
                           "(openvino)", expected)


def test_shutdown_leaves_no_process(served: Server) -> None:
    """Last in the module: Ctrl-C (SIGINT) stops Triton, the backend stub and the server process, and frees the
    ports."""
    stop_and_check(served)
