"""`maskrt bench`: per-stage latency percentiles and throughput for the CPU backends, written as JSON."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_checkpoint
from PIL import Image

from maskrt.cli import main
from maskrt.export.onnx_export import export_checkpoint

CLI = [sys.executable, "-m", "maskrt.cli"]


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    random_checkpoint(root / "slim.pt")
    export_checkpoint(root / "slim.pt", root / "export", dynamic_batch=True)
    return root / "slim.pt", root / "export"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_bench_writes_percentiles_per_stage(slim: tuple[Path, Path], tmp_path: Path, backend: str) -> None:
    ckpt, export = slim
    model = export if backend == "onnxruntime" else ckpt
    (tmp_path / "images").mkdir()
    for size in ((90, 120), (150, 100)):
        Image.new("RGB", size, (120, 30, 200)).save(tmp_path / "images" / f"img{size[0]}.png")
    out = tmp_path / "bench.json"  # beside the images: no output lies inside an input
    proc = subprocess.run([*CLI, "bench", "run", "--model", str(model), "--backend", backend, "--images",
                           str(tmp_path / "images"),
                           "--batch", "2", "--warmup", "1", "--iters", "4", "--threads", "1", "--json", str(out), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["backend"] == backend and result["batch"] == 2 and result["iters"] == 4
    assert result["image_sizes"] == [[100, 150], [120, 90]] and result["padded_size"] == [128, 128]
    assert set(result["stages"]) == {"preprocess", "network", "paste", "end_to_end"}
    for p in result["stages"].values():
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"]
    e2e = result["stages"]["end_to_end"]["p50_ms"]
    assert e2e >= result["stages"]["network"]["p50_ms"] and result["images_per_second"] > 0
    assert result["machine"]["onnxruntime_threads"] == 1 and "torch" in result["versions"]
    assert "images/s" in proc.stdout and "end_to_end" in proc.stdout
    again = subprocess.run([*CLI, "bench", "run", "--model", str(model), "--backend", backend, "--json", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists (pass --force" in again.stderr


@pytest.mark.slow
def test_bench_compare_runs_every_candidate_side_by_side(tmp_path: Path) -> None:
    """`bench --compare` on a seeded random slim model at a tiny size: export, INT8 quantization, torchvision's ONNX
    export and the parts are made in --work; the table and the JSON hold every candidate with sane numbers."""
    out, md, work = tmp_path / "compare.json", tmp_path / "compare.md", tmp_path / "work"
    argv = ["bench", "compare", "--random", "slim", "--size", "64", "--threads", "1", "--warmup", "1", "--iters", "2",
            "--int8", "--work", str(work), "--json", str(out), "--markdown", str(md), "-q"]
    # a process of its own, as the CLI runs it (when every OpenVINO backend made its own openvino.Core, these rows in
    # process were followed by a SIGSEGV some tests later; one Core per process now: README, OpenVINO)
    proc = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stdout = proc.stdout
    result = json.loads(out.read_text())
    from maskrt.runtime.backends.openvino_runtime import cpu_supports_bf16  # the openvino extra: make test installs it

    openvino = ["openvino_f32", *(["openvino_bf16"] if cpu_supports_bf16() else []), "openvino_int8"]
    assert list(result["candidates"]) == ["eager", "torchvision_onnx", "portable", "trt", "portable_int8", "trt_int8",
                                          "openvino_f32", "cpp_openvino_f32", *openvino[1:]]
    assert "openvino" in result["versions"]
    assert result["padded_size"] == [128, 128] and result["image_sizes"] == [[64, 64]]  # slim resizes to 128
    assert result["threads"] == result["machine"]["onnxruntime_threads"] == result["machine"]["torch_threads"] == 1
    assert result["iters"] == 2 and {"torch", "torchvision", "onnxruntime"} <= set(result["versions"])
    assert result["command"] == shlex.join(["maskrt", *argv])
    assert {"export_s", "quantize_s", "torchvision_onnx_export_s"} <= set(result["setup_seconds"])
    assert (work / "export" / "model.onnx").is_file() and (work / "export-int8" / "model.int8.onnx").is_file()
    candidates = result["candidates"]
    e2e = {name: c["stages"]["end_to_end"]["p50_ms"] for name, c in candidates.items()}
    for name, c in candidates.items():
        for p in c["stages"].values():
            assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"]
        if name != "cpp_openvino_f32":  # the C++ runtime reports its end to end only
            assert c["stages"]["end_to_end"]["p50_ms"] >= c["stages"]["network"]["p50_ms"]
        assert c["x_eager"] == pytest.approx(e2e["eager"] / e2e[name], rel=0.01)
        assert c["x_torchvision_onnx"] == pytest.approx(e2e["torchvision_onnx"] / e2e[name], rel=0.01)
        assert c["end_to_end_over_parts"] == pytest.approx(e2e[name] / result["parts_sum_p50_ms"], rel=0.01)
    assert "paste" not in candidates["torchvision_onnx"]["stages"]  # its graph pastes the masks itself
    assert all("paste" in candidates[g]["stages"] for g in ("eager", "portable", "trt", "portable_int8", "trt_int8",
                                                             *openvino))
    # every fp32 candidate finds the same detections on the image: all 100 slots of the seeded random model
    counts = {name: c["detections"]["per_image"] for name, c in candidates.items()}
    assert counts["eager"] == counts["torchvision_onnx"] == counts["portable"] == counts["trt"] == [100]
    assert counts["openvino_f32"] == counts["cpp_openvino_f32"] == [100]
    assert set(candidates["cpp_openvino_f32"]["stages"]) == {"end_to_end"}
    assert counts["portable_int8"][0] > 0 and counts["trt_int8"][0] > 0 and counts["openvino_int8"][0] > 0
    parts = result["parts"]
    assert list(parts) == ["backbone+FPN", "RPN head", "box head (300 RoIs)", "mask head (100 RoIs)"]
    assert all(p["p50_ms"] > 0 for p in parts.values())
    assert result["parts_sum_p50_ms"] == pytest.approx(sum(p["p50_ms"] for p in parts.values()), abs=0.01)
    table = stdout.split("\nwrote ")[0].strip()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| | end to end p50 ms | p90 ms |") and len(rows) == 1 + 6 + len(openvino) + 1 + 1 + 4 + 1
    assert f"| {candidates['portable']['label']} | {e2e['portable']:.1f} |" in table
    assert md.read_text() == f"{table}\n\n`{result['command']}`\n"


def test_bench_compare_refuses_bad_inputs(slim: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    ckpt, export = slim
    other = random_checkpoint(tmp_path / "other.pt", seed=1)
    for args, message in (  # each benchmark's parser holds only its own options
        (["compare"], "one of the arguments --checkpoint --random is required"),
        (["compare", "--random", "slim", "--checkpoint", str(ckpt)], "argument --checkpoint: not allowed with"),
        (["compare", "--checkpoint", str(ckpt), "--graph", "trt"], "unrecognized arguments: --graph trt"),
        (["compare", "--checkpoint", str(other), "--model", str(export)], "exported from another checkpoint"),
        (["compare", "--checkpoint", str(ckpt), "--work", str(export.parent)], "holds the checkpoint"),
        (["run", "--random", "slim"], "the following arguments are required: --model"),
        (["run", "--model", str(export), "--int8"], "unrecognized arguments: --int8"),
        (["server", "--model", str(export)], "the following arguments are required: --server"),
        (["--model", str(export)], "argument KIND: invalid choice"),  # the spelling before the split is gone
    ):
        try:
            code = main(["bench", *args, "-q"])
        except SystemExit as exc:  # argparse's refusals exit from parse_args
            code = exc.code
        assert code == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (args, err)


def test_exporting_a_network_part_leaves_the_eager_model_in_eval_mode(tmp_path: Path) -> None:
    """bench compare exports the heads alone in wrappers of their own; torch.onnx.export restores a wrapper's train
    mode recursively, which put the shared res5 of a C4 model (BatchNorm) in train mode: its eager candidate then
    found 31.6 detections per image instead of the graphs' 5.2."""
    import torch

    from maskrt.runtime.bench.compare import _Heads, _onnx_export
    from maskrt.training.models import build_model, default_model_config

    torch.manual_seed(0)
    model = build_model(default_model_config("slim-c4", 3)).eval()
    heads = _Heads(model.roi_heads.box_head, model.roi_heads.box_predictor)
    _onnx_export(heads, (torch.randn(4, 256, 14, 14),), tmp_path / "part.onnx", ["in0"])
    assert not [name for name, m in model.named_modules() if m.training]


@pytest.mark.parametrize("fails", [False, True])
def test_bench_compare_restores_the_callers_torch_threads(monkeypatch: pytest.MonkeyPatch, fails: bool) -> None:
    """run_compare times on --threads torch threads, and hands the caller's count back afterwards, also when the
    comparison stops with an error (library code leaves process-wide state as it found it)."""
    import torch

    from maskrt.core.errors import MaskrtError
    from maskrt.runtime.bench import compare

    seen: list[int] = []

    def stub(*args: object) -> dict:
        seen.append(torch.get_num_threads())
        if fails:
            raise MaskrtError("stopped")
        return {}

    monkeypatch.setattr(compare, "_compare", stub)
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    try:
        try:
            compare.run_compare(random_config="slim", threads=wanted, progress=False)
        except MaskrtError:
            assert fails
        assert seen == [wanted] and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
