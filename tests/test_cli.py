"""The console script: --help everywhere, one-line errors (no traceback) on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "maskrt.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sub", [[], ["data"], ["data", "shapes"], ["train"], ["eval"], ["import"], ["export"],
                                 ["predict"], ["parity"], ["build"], ["bench"], ["bench", "run"], ["bench", "compare"],
                                 ["bench", "server"], ["quantize"], ["serve"], ["triton"],
                                 ["demo"]])
def test_help(sub: list[str], capsys: pytest.CaptureFixture) -> None:
    from maskrt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*sub, "--help"])
    assert exit_.value.code == 0 and "usage: maskrt" in capsys.readouterr().out


def test_the_console_entry_point_runs() -> None:
    """`python -m maskrt.cli` (what the tests' subprocesses run; the `maskrt` script calls the same main)."""
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("maskrt ")


def _assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    # our own errors read "error: ..."; argparse's read "maskrt SUB: error: ..." after the usage lines
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], proc.stderr


@pytest.mark.slow
def test_bad_input_gives_one_line_errors(tmp_path: Path, shapes_dir: Path) -> None:
    _assert_one_line_error(_run("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")),
                           "nope: dataset folder not found")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    _assert_one_line_error(_run("eval", "--checkpoint", str(garbage), "--data", str(shapes_dir)),
                           "garbage.pt: not a readable maskrt checkpoint")
    _assert_one_line_error(_run("data", "shapes", "--out", str(tmp_path / "d"), "--size", "8"), "--size")
    _assert_one_line_error(_run("import", "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "o")),
                           "w.pth: weights file not found")
    _assert_one_line_error(_run("train", "--data", str(shapes_dir), "--out", str(tmp_path / "r"), "--iters", "0"),
                           "--iters")


@pytest.mark.slow
def test_data_shapes_and_eval(tmp_path: Path) -> None:
    out = tmp_path / "d"
    proc = _run("data", "shapes", "--out", str(out), "--train", "5", "--val", "3", "--size", "64", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["instances_train.json", "instances_val.json"]
    assert len(list((out / "train").glob("*.png"))) == 5 and len(list((out / "val").glob("*.png"))) == 3
    run = tmp_path / "run"
    proc = _run("train", "--data", str(out), "--out", str(run), "--iters", "2", "--batch-size", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "segm  AP" in proc.stdout
    proc = _run("eval", "--checkpoint", str(run / "last.pt"), "--data", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert (run / "eval_val.json").is_file() and "bbox  AP" in proc.stdout


@pytest.mark.slow
def test_sigterm_during_export_leaves_the_previous_export_and_no_temporary_files(tmp_path: Path) -> None:
    """An interrupted re-export (--force) into an existing folder keeps the old folder whole and cleans up."""
    import signal
    import time

    import torch

    from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
    from maskrt.training.models import build_model, default_model_config

    cfg = default_model_config("r50-fpn", 2)  # its export takes long enough to be interrupted
    ckpt = tmp_path / "r50.pt"
    torch.manual_seed(0)
    save_checkpoint(ckpt, make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(),
                                          classes=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]))
    export = tmp_path / "export"
    export.mkdir()
    (export / "export.json").write_text("the previous export")
    proc = subprocess.Popen([*CLI, "export", "--checkpoint", str(ckpt), "--out", str(export), "--force",
                             "--height", "320", "--width", "320"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".maskrt-staging-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)  # wait until the export has started writing
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "error: interrupted" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "r50.pt"]
    assert [p.name for p in export.iterdir()] == ["export.json"]
    assert (export / "export.json").read_text() == "the previous export"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_suite_fails_fast_without_a_gpu() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["bash", str(root / "scripts" / "gpu_suite.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 1 and "no CUDA GPU visible to torch" in proc.stderr, proc.stderr
    assert "== gpu tests" not in proc.stdout
