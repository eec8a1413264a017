"""Nothing lost under --force, write faults, crashes and races (issue 22).

- every command x every input kind x (equal, parent, child): the output is refused before any work, with --force;
- write faults (a file-size limit with setrlimit, a full disk with a small tmpfs) in real processes: one line, exit 2,
  the previous output intact, no temporary files;
- kill -9 mid-export: the next run into the same place removes the leftover with a note;
- two writers of one output: the second gets "in use by another maskrt process", for every writing command.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from maskrt.cli import main
from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "maskrt.cli"]


def _digest(*roots: Path) -> dict[str, str]:
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.rglob("*") if p.name.startswith((".maskrt-staging", ".maskrt-lock"))]


def _call(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


# -- every command x every input kind x (equal, parent, child) ----------------------------------------------------
# (command, what the input is, the input (world W, test folder T), argv with the output OUT)
Case = tuple[str, str, Callable[[Path, Path], Path], Callable[[Path, Path, Path], list]]
CASES: list[Case] = [
    ("train", "dataset", lambda w, t: w / "data",
     lambda w, t, out: ["train", "--data", w / "data", "--out", out, "--iters", "1", "--force"]),
    ("eval", "checkpoint", lambda w, t: w / "ckpt.pt",
     lambda w, t, out: ["eval", "--checkpoint", w / "ckpt.pt", "--data", w / "data", "--out", out, "--force"]),
    ("eval", "dataset", lambda w, t: w / "data",
     lambda w, t, out: ["eval", "--checkpoint", w / "ckpt.pt", "--data", w / "data", "--out", out, "--force"]),
    ("import", "weights file", lambda w, t: w / "ckpt.pt",
     lambda w, t, out: ["import", "--weights", w / "ckpt.pt", "--out", out, "--force"]),
    ("import", "class-names file", lambda w, t: t / "names" / "classes.txt",
     lambda w, t, out: ["import", "--weights", w / "ckpt.pt", "--classes", t / "names" / "classes.txt", "--out", out,
                        "--force"]),
    ("export", "checkpoint", lambda w, t: w / "ckpt.pt",
     lambda w, t, out: ["export", "--checkpoint", w / "ckpt.pt", "--out", out, "--force"]),
    ("predict", "model", lambda w, t: w / "export",
     lambda w, t, out: ["predict", "--model", w / "export", "--out", out, w / "photo.png", "--force"]),
    ("predict", "checkpoint", lambda w, t: w / "ckpt.pt",
     lambda w, t, out: ["predict", "--model", w / "export", "--backend", "torch", "--checkpoint", w / "ckpt.pt",
                        "--out", out, w / "photo.png", "--force"]),
    ("predict", "image", lambda w, t: w / "photo.png",
     lambda w, t, out: ["predict", "--model", w / "export", "--out", out, w / "photo.png", "--force"]),
    ("predict", "image", lambda w, t: w / "data" / "val",
     lambda w, t, out: ["predict", "--model", w / "export", "--out", out, w / "data" / "val", "--force"]),
    ("parity", "checkpoint", lambda w, t: w / "ckpt.pt",
     lambda w, t, out: ["parity", "--checkpoint", w / "ckpt.pt", "--model", w / "export", "--data", w / "data",
                        "--out", out, "--force"]),
    ("parity", "model", lambda w, t: w / "export",
     lambda w, t, out: ["parity", "--checkpoint", w / "ckpt.pt", "--model", w / "export", "--data", w / "data",
                        "--out", out, "--force"]),
    ("parity", "dataset", lambda w, t: w / "data",
     lambda w, t, out: ["parity", "--checkpoint", w / "ckpt.pt", "--model", w / "export", "--data", w / "data",
                        "--out", out, "--force"]),
    ("build", "export file", lambda w, t: w / "export" / "export.json",
     lambda w, t, out: ["build", "--model", w / "export", "--out", out, "--force"]),
    ("build", "export file", lambda w, t: w / "export" / "model.onnx",
     lambda w, t, out: ["build", "--model", w / "export", "--out", out, "--force"]),
    ("build", "export file", lambda w, t: w / "export" / "model.trt.onnx",
     lambda w, t, out: ["build", "--model", w / "export", "--timing-cache", out, "--force"]),
    ("bench", "model", lambda w, t: w / "export",
     lambda w, t, out: ["bench", "run", "--model", w / "export", "--json", out, "--force"]),
    ("bench", "images", lambda w, t: w / "data" / "val",
     lambda w, t, out: ["bench", "run", "--model", w / "export", "--images", w / "data" / "val", "--json", out,
                        "--force"]),
    ("bench", "checkpoint", lambda w, t: w / "ckpt.pt",
     lambda w, t, out: ["bench", "compare", "--checkpoint", w / "ckpt.pt", "--work", out, "--force"]),
    ("bench", "calibration folder", lambda w, t: w / "data" / "train",
     lambda w, t, out: ["bench", "compare", "--checkpoint", w / "ckpt.pt", "--int8", "--calibration",
                        w / "data" / "train", "--markdown", out, "--force"]),
    ("quantize", "export folder", lambda w, t: w / "export",
     lambda w, t, out: ["quantize", "--model", w / "export", "--calibration", w / "data" / "train", "--out", out,
                        "--force"]),
    ("quantize", "calibration folder", lambda w, t: w / "data" / "train",
     lambda w, t, out: ["quantize", "--model", w / "export", "--calibration", w / "data" / "train", "--out", out,
                        "--force"]),
    ("quantize", "dataset", lambda w, t: w / "data",
     lambda w, t, out: ["quantize", "--model", w / "export", "--calibration", w / "data" / "train", "--max-dap-drop",
                        "1", "--data", w / "data", "--out", out, "--force"]),
    ("quantize", "checkpoint", lambda w, t: w / "ckpt.pt",
     lambda w, t, out: ["quantize", "--model", w / "export", "--calibration", w / "data" / "train", "--max-dap-drop",
                        "1", "--data", w / "data", "--checkpoint", w / "ckpt.pt", "--out", out, "--force"]),
    ("layers", "export folder", lambda w, t: w / "export",
     lambda w, t, out: ["layers", "--model", w / "export", "--graph", "trt", "--data", w / "data", "--out", out,
                        "--force"]),
    ("layers", "dataset", lambda w, t: w / "data",
     lambda w, t, out: ["layers", "--model", w / "export", "--graph", "trt", "--data", w / "data", "--out", out,
                        "--force"]),
    ("layers", "images", lambda w, t: w / "data" / "val",
     lambda w, t, out: ["layers", "--model", w / "export", "--graph", "trt", "--images", w / "data" / "val", "--out",
                        out, "--force"]),
    ("layers", "checkpoint", lambda w, t: w / "ckpt.pt",
     lambda w, t, out: ["layers", "--model", w / "export", "--graph", "trt", "--checkpoint", w / "ckpt.pt", "--data",
                        w / "data", "--out", out, "--force"]),
    ("triton", "model", lambda w, t: w / "export",
     lambda w, t, out: ["triton", "--model", w / "export", "--out", out, "--force"]),
]
RELATIONS = {"equal": (lambda p: p, "is the"), "parent": (lambda p: p.parent, "holds the"),
             "child": (lambda p: p / "sub", "lies inside the")}
COMMANDS = {"data", "train", "eval", "import", "export", "predict", "parity", "build", "bench", "quantize", "serve",
            "triton", "demo", "layers"}


def test_every_command_with_inputs_is_in_the_table() -> None:
    from maskrt.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert commands == COMMANDS, "a new command: add its inputs to CASES (and to its parser's io)"
    assert {c[0] for c in CASES} == COMMANDS - {"data", "serve", "demo"}  # those read no user file they could replace


@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1].replace(' ', '_')}-{i}" for i, c in enumerate(CASES)])
def test_no_output_is_holds_or_lies_inside_an_input(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    case: Case, relation: str) -> None:
    command, what, input_of, argv = case
    (tmp_path / "names").mkdir()
    (tmp_path / "names" / "classes.txt").write_text("circle\nrectangle\ntriangle\n")
    inp = input_of(world, tmp_path)
    derive, phrase = RELATIONS[relation]
    out = derive(inp)
    before = _digest(world, tmp_path)
    code, err = _call(argv(world, tmp_path, out), capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    expected = f"{phrase} {what}" if relation != "parent" else phrase  # a parent may hold another input first
    assert expected in errors[0], errors[0]
    assert _digest(world, tmp_path) == before, "an input changed"
    assert not _leftovers(world, tmp_path)


def _run_folder(w: Path, t: Path) -> Path:
    (t / "R").mkdir()
    shutil.copy(w / "ckpt.pt", t / "R" / "last.pt")
    return t / "R"


def _project(w: Path, t: Path) -> Path:
    shutil.copytree(w / "export", t / "P" / "exp")
    return t / "P"


# The first sweep's data-loss examples, as a user typed them (issue 22): each is refused and loses nothing.
EXAMPLES = {
    "export-into-the-checkpoint's-folder": lambda w, t: ["export", "--checkpoint", _run_folder(w, t) / "last.pt",
                                                         "--out", t / "R", "--force"],
    "predict-into-the-export": lambda w, t: ["predict", "--model", w / "export", "--out", w / "export",
                                             w / "photo.png", "--force"],
    "parity-into-the-dataset": lambda w, t: ["parity", "--checkpoint", w / "ckpt.pt", "--model", w / "export",
                                             "--data", w / "data", "--out", w / "data", "--force"],
    "train-into-the-dataset": lambda w, t: ["train", "--data", w / "data", "--out", w / "data", "--force"],
    "eval-over-the-annotations": lambda w, t: ["eval", "--checkpoint", w / "ckpt.pt", "--data", w / "data", "--out",
                                               w / "data" / "annotations" / "instances_val.json", "--force"],
    "quantize-into-its-input's-parent": lambda w, t: ["quantize", "--model", _project(w, t) / "exp",
                                                      "--calibration", w / "data" / "train", "--out", t / "P",
                                                      "--force"],
}


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_the_sweeps_data_loss_examples_are_refused(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    example: str) -> None:
    argv = EXAMPLES[example](world, tmp_path)
    before = _digest(world, tmp_path)
    code, err = _call(argv, capsys)
    assert code == 2 and any(p in err for p in ("is the", "holds the", "lies inside the")), err
    assert _digest(world, tmp_path) == before and not _leftovers(world, tmp_path)


# -- write faults in real processes ------------------------------------------------------------------------------
def _limited(argv: list, limit: int) -> subprocess.CompletedProcess:
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*CLI, *map(str, argv)], capture_output=True, text=True, timeout=600, preexec_fn=set_limit)


def _previous(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "keep.txt").write_text("the previous output")
    return folder


def _one_error(proc: subprocess.CompletedProcess, path: Path, cause: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and str(path) in errors[0] and cause in errors[0].lower(), proc.stderr


@pytest.mark.parametrize("command", ["export", "train", "predict", "layers"])
def test_a_file_size_limit_is_one_line_and_keeps_the_previous_output(world: Path, tmp_path: Path,
                                                                    command: str) -> None:
    out = _previous(tmp_path / "out")
    argv = {"export": ["export", "--checkpoint", world / "ckpt.pt", "--out", out, "--force"],
            "train": ["train", "--data", world / "data", "--out", out, "--iters", "1", "--force", "-q"],
            "predict": ["predict", "--model", world / "export", "--out", out, world / "data" / "val", "--force",
                        "-q"],
            "layers": ["layers", "--model", world / "export", "--graph", "trt", "--data", world / "data", "--limit",
                       "1", "--out", out, "--force", "-q"]}[command]
    # graphs, checkpoint ~50 MB; overlays; layers.json ~1 MB
    limit = {"export": 1 << 20, "train": 1 << 20, "predict": 2048, "layers": 4096}[command]
    proc = _limited(argv, limit)
    _one_error(proc, out, "file too large")
    if command == "train":  # a run folder is replaced at the start (--force); the checkpoint save failed cleanly
        assert not (out / "last.pt").exists() and not _leftovers(tmp_path)
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not _leftovers(tmp_path)
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _in_small_filesystem(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `script` (sh) in a private mount namespace where $FS is a fresh 8 MiB tmpfs."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare for a private tmpfs (a real full disk)")
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", "mount -t tmpfs -o size=1m none "
                            f"{tmp_path}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not allow a private tmpfs ({probe.stderr.strip()})")
    fs = tmp_path / "fs"
    fs.mkdir()
    return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                           f"mount -t tmpfs -o size=8m none {fs} && {script}"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "FS": str(fs)})


@pytest.mark.parametrize("command", ["export", "train", "predict-on-a-full-disk"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_output(world: Path, tmp_path: Path, command: str) -> None:
    fs = tmp_path / "fs"
    cli = " ".join(CLI)
    argv = {"export": f"export --checkpoint {world / 'ckpt.pt'} --out $FS/out --force",
            "train": f"train --data {world / 'data'} --out $FS/out --iters 1 --force -q",
            "predict-on-a-full-disk": f"predict --model {world / 'export'} --out $FS/out {world / 'photo.png'} --force "
                                      "-q"}[command]
    fill = "; dd if=/dev/zero of=$FS/fill bs=64k 2>/dev/null" if command.endswith("full-disk") else ""
    script = (f"mkdir $FS/out && echo previous > $FS/out/keep.txt{fill}; {cli} {argv}; rc=$?; ls -A $FS $FS/out; "
              "exit $rc")
    proc = _in_small_filesystem(script, tmp_path)
    _one_error(proc, fs / "out", "no space left on device")
    listing = proc.stdout.split()
    assert not [name for name in listing if name.startswith(".maskrt")], proc.stdout
    if command != "train":  # train --force deletes the old run first, by design
        assert listing.count("keep.txt") == 1, proc.stdout


# -- a killed writer's leftovers ---------------------------------------------------------------------------------
def test_kill_9_mid_export_leaves_staging_that_the_next_run_removes(world: Path, tmp_path: Path) -> None:
    cfg = default_model_config("r50-fpn", 2)  # its export takes long enough to be killed mid-write
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "r50.pt", make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(),
                                                         classes=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]))
    out = tmp_path / "export"
    proc = subprocess.Popen([*CLI, "export", "--checkpoint", str(tmp_path / "r50.pt"), "--out", str(out), "--height",
                             "320", "--width", "320"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not any(
            p.is_dir() and any(p.iterdir()) for p in tmp_path.glob(".maskrt-staging-export-*")):
        time.sleep(0.05)  # until the export has written into its staging folder
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    left = list(tmp_path.glob(".maskrt-staging-export-*"))
    assert proc.returncode == -signal.SIGKILL and len(left) == 1, left
    assert not out.exists()
    again = subprocess.run([*CLI, "export", "--checkpoint", str(world / "ckpt.pt"), "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    notes = [line for line in again.stderr.splitlines() if "interrupted maskrt run" in line]
    assert len(notes) == 1 and left[0].name in notes[0] and f"pid {proc.pid}" in notes[0], again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "r50.pt"]
    assert json.loads((out / "export.json").read_text())["model_config"]["name"] == "slim"


# -- one writer per output ---------------------------------------------------------------------------------------
def test_two_exports_into_one_new_folder_the_second_is_refused(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    first = subprocess.Popen([*CLI, "export", "--checkpoint", str(world / "ckpt.pt"), "--out", str(out)],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".maskrt-lock-export").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.run([*CLI, "export", "--checkpoint", str(world / "ckpt.pt"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"in use by another maskrt process (pid {first.pid})" in second.stderr, second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no lock or staging left


@pytest.fixture
def held(tmp_path: Path):  # noqa: ANN201
    """A function: hold an output's lock from another process (until the test ends)."""
    holders = []

    def hold(output: Path) -> subprocess.Popen:
        code = ("import sys; from maskrt.core.outputs import output_lock\n"
                "with output_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")
        proc = subprocess.Popen([sys.executable, "-c", code, str(output)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        holders.append(proc)
        return proc

    yield hold
    for proc in holders:
        proc.communicate(input="", timeout=30)


WRITERS: dict[str, Callable[[Path, Path], list]] = {
    "data": lambda w, out: ["data", "shapes", "--out", out, "--train", "2", "--val", "2"],
    "train": lambda w, out: ["train", "--data", w / "data", "--out", out, "--iters", "1"],
    "train-resume": lambda w, out: ["train", "--data", w / "data", "--out", out, "--iters", "1", "--resume"],
    "eval": lambda w, out: ["eval", "--checkpoint", w / "ckpt.pt", "--data", w / "data", "--out", out],
    "export": lambda w, out: ["export", "--checkpoint", w / "ckpt.pt", "--out", out],
    "predict": lambda w, out: ["predict", "--model", w / "export", "--out", out, w / "photo.png"],
    "parity": lambda w, out: ["parity", "--checkpoint", w / "ckpt.pt", "--model", w / "export", "--data",
                              w / "data", "--out", out],
    "quantize": lambda w, out: ["quantize", "--model", w / "export", "--calibration", w / "data" / "train",
                                "--out", out],
    "triton": lambda w, out: ["triton", "--model", w / "export", "--out", out],
    "bench": lambda w, out: ["bench", "run", "--model", w / "export", "--json", out],
    "build": lambda w, out: ["build", "--model", w / "export", "--out", out],
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_an_output_in_use_by_another_process_is_refused(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        held, command: str) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    holder = held(out)
    code, err = _call(WRITERS[command](world, out), capsys)
    assert code == 2 and f"{out}: in use by another maskrt process (pid {holder.pid})" in err, err
    assert not out.exists()


def test_every_artifact_is_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines and JSON (write_atomic), checkpoints (atomic_save) and staged folders are fsynced, file and folder,
    before they become the output: one helper (core.files.durable_write / fsync_tree) for every artifact."""
    from maskrt.core import files
    from maskrt.core.outputs import staged_dir
    from maskrt.training.checkpoint import atomic_save

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    files.write_atomic(tmp_path / "model.fp16.engine", b"engine bytes")
    assert synced[0].startswith(str(tmp_path / ".maskrt-staging-model.fp16.engine")) and synced[1] == str(tmp_path)
    synced.clear()
    atomic_save({"a": torch.zeros(2)}, tmp_path / "last.pt")
    assert synced[0].startswith(str(tmp_path / ".maskrt-staging-last.pt")) and synced[1] == str(tmp_path)
    synced.clear()
    with staged_dir(tmp_path / "export") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "model.onnx").write_bytes(b"graph")
        (staging / "export.json").write_text("{}")
    assert {Path(p).name for p in synced} >= {"model.onnx", "export.json", "sub", staging.name}
    assert (tmp_path / "export" / "sub" / "model.onnx").read_bytes() == b"graph"
