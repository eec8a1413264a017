"""The bad-input sweep, table-driven: each row feeds one bad input to one subcommand and checks that it exits with
code 2 and one line `error: ...` naming the problem, no traceback, every input file byte-identical afterwards and no
temporary file left behind. Rows run the CLI in-process (cli.main) for speed; test_cli.py runs it as a process."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrt.cli import main
from maskrt.training.checkpoint import make_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config

pytestmark = pytest.mark.slow


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.rglob("*")
            if ".maskrt-staging" in p.name or ".maskrt-lock-" in p.name or p.name.endswith(".tmp")]


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _copy_export(w: Path, t: Path, change: Callable[[dict], None]) -> Path:
    shutil.copytree(w / "export", t / "bad_export")
    _edit_json(t / "bad_export" / "export.json", change)
    return t / "bad_export"


def _fewer_slots(w: Path, t: Path) -> Path:
    """A copy of the export whose record says 50 detection slots."""
    return _copy_export(w, t, lambda d: d["limits"].update(max_detections=50))


def _copy_data(w: Path, t: Path, change: Callable[[dict], None], split: str = "val") -> Path:
    shutil.copytree(w / "data", t / "bad_data")
    _edit_json(t / "bad_data" / "annotations" / f"instances_{split}.json", change)
    return t / "bad_data"


def _checkpoint(w: Path, t: Path, change: Callable[[dict], None]) -> Path:
    ckpt = torch.load(w / "ckpt.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, t / "bad.pt")
    return t / "bad.pt"


def _nonempty(t: Path, name: str) -> Path:
    (t / name).mkdir()
    (t / name / "keep.txt").write_text("earlier work")
    return t / name


def _pickle_with_code(t: Path) -> Path:
    path = t / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format_version": 1, "x": os.getcwd}, f)  # a reference to a callable: refused by a safe load
    return path


def _fifo(t: Path) -> Path:
    os.mkfifo(t / "x.png")
    return t / "x.png"


def _image(t: Path, w: int, h: int) -> Path:
    Image.new("RGB", (w, h), (10, 200, 30)).save(t / f"img_{w}x{h}.png")
    return t / f"img_{w}x{h}.png"


def _unreadable_train_image(w: Path, t: Path) -> Path:
    data = _copy_data(w, t, lambda d: None)
    for image in sorted((data / "train").glob("*.png"))[:24]:
        image.write_bytes(b"not an image")
    return data


def _other_classes(w: Path, t: Path) -> Path:
    cfg = default_model_config("slim", 2)
    save_checkpoint(t / "other.pt", make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(),
                                                    classes=[{"id": 5, "name": "a"}, {"id": 6, "name": "b"}]))
    return t / "other.pt"


def _tamper(w: Path, t: Path) -> Path:
    shutil.copytree(w / "export", t / "tampered")
    with open(t / "tampered" / "model.onnx", "ab") as f:
        f.write(b"\0")
    return t / "tampered"


W, T = "W", "T"  # placeholders in argv templates for the world and the row's own folder

# (row id, argv builder (world, row folder) -> argv, expected fragment of the error line, extra environment)
ROWS: list[tuple[str, Callable[[Path, Path], list[str]], str, dict[str, str]]] = [
    # data loss
    ("predict-out-holds-input", lambda w, t: ["predict", "--model", f"{w}/export", "--out", f"{w}",
                                              f"{w}/photo.png", "--force"], "holds the model", {}),
    ("train-existing-run", lambda w, t: ["train", "--data", f"{w}/data", "--out", str(_nonempty(t, "run")),
                                         "--iters", "1"], "exists and is not empty (pass --resume", {}),
    ("shapes-existing-folder", lambda w, t: ["data", "shapes", "--out", str(_nonempty(t, "d"))],
     "exists and is not empty (pass --force", {}),
    ("export-existing-folder", lambda w, t: ["export", "--checkpoint", f"{w}/ckpt.pt", "--out",
                                             str(_nonempty(t, "e"))], "exists and is not empty", {}),
    ("parity-existing-folder", lambda w, t: ["parity", "--checkpoint", f"{w}/ckpt.pt", "--model", f"{w}/export",
                                             "--data", f"{w}/data", "--out", str(_nonempty(t, "p"))],
     "exists and is not empty", {}),
    ("eval-existing-file", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data", f"{w}/data",
                                         "--out", f"{w}/photo.png"], "photo.png: exists", {}),
    ("eval-out-is-the-checkpoint", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data", f"{w}/data",
                                                 "--out", f"{w}/ckpt.pt", "--force"], "is the checkpoint", {}),
    ("import-out-is-the-weights", lambda w, t: ["import", "--weights", f"{w}/ckpt.pt", "--out", f"{w}/ckpt.pt",
                                                "--force"], "is the weights file", {}),
    # classes agree by id AND name (issue 22)
    ("eval-names-permuted", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data",
                                          str(_copy_data(w, t, _permute_names)), "--out", f"{t}/m.json"],
     "label 1: id 1 'circle' vs id 1 'rectangle'", {}),
    ("eval-ids-swapped", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data",
                                       str(_copy_data(w, t, _swap_ids)), "--out", f"{t}/m.json"],
     "disagree on the classes", {}),
    ("parity-names-permuted", lambda w, t: ["parity", "--checkpoint", f"{w}/ckpt.pt", "--model", f"{w}/export",
                                            "--data", str(_copy_data(w, t, _permute_names)), "--out", f"{t}/p"],
     "disagree on the classes", {}),
    ("parity-checkpoint-names-permuted", lambda w, t: ["parity", "--checkpoint", str(_checkpoint(w, t, _names_ckpt)),
                                                       "--model", f"{w}/export", "--data", f"{w}/data", "--out",
                                                       f"{t}/p"], "disagree on the classes", {}),
    ("predict-torch-names-permuted", lambda w, t: ["predict", "--model", f"{w}/export", "--backend", "torch",
                                                   "--checkpoint", str(_checkpoint(w, t, _names_ckpt)), "--out",
                                                   f"{t}/o", f"{w}/photo.png"], "disagree on the classes", {}),
    ("resume-names-permuted", lambda w, t: ["train", "--data", str(_copy_data(w, t, _permute_names, "train")),
                                            "--out", str(_full_resume_run(w, t)), "--resume", "--iters", "2"],
     "disagree on the classes", {}),
    # non-finite weights and outputs (issue 22)
    ("export-nan-weight", lambda w, t: ["export", "--checkpoint", str(_checkpoint(w, t, _nan_weight)), "--out",
                                        f"{t}/e"], "backbone.body.layer1.0.conv1.weight holds 1 non-finite", {}),
    ("predict-torch-nan-weight", lambda w, t: ["predict", "--model", str(_checkpoint(w, t, _nan_weight)),
                                               "--backend", "torch", "--out", f"{t}/o", f"{w}/photo.png"],
     "non-finite value(s)", {}),
    ("predict-nan-graph", lambda w, t: ["predict", "--model", str(_nan_graph(w, t)), "--out", f"{t}/o",
                                        f"{w}/photo.png"], "photo.png: the network's boxes hold non-finite", {}),
    # export.json and ENGINE.json within the CLI's limits (issue 22)
    ("predict-height-range-100000", lambda w, t: ["predict", "--model", str(_copy_export(
        w, t, lambda d: d["input"].update(height_range=[32, 100000]))), "--out", f"{t}/o", f"{w}/photo.png"],
     "input.height_range must be", {}),
    ("build-height-range-100000", lambda w, t: ["build", "--model", str(_copy_export(
        w, t, lambda d: d["input"].update(height_range=[32, 100000])))], "input.height_range must be", {}),
    ("build-engine-is-the-timing-cache", lambda w, t: ["build", "--model", f"{w}/export", "--out", f"{t}/e.engine",
                                                       "--timing-cache", f"{t}/e.engine"], "named for two outputs", {}),
    ("demo-into-someone-elses-folder", lambda w, t: ["demo", "--out", str(_nonempty(t, "mine"))],
     "is not a folder `maskrt demo` made", {}),
    ("demo-unknown-config", lambda w, t: ["demo", "--config", "r101-fpn", "--out", f"{t}/d"], "invalid choice", {}),
    ("train-unknown-config", lambda w, t: ["train", "--data", f"{w}/data", "--config", "r101-fpn", "--out", f"{t}/r"],
     "invalid choice", {}),
    ("import-min-size-above-max-size", lambda w, t: ["import", "--weights", f"{w}/ckpt.pt", "--out", f"{t}/c.pt",
                                                     "--min-size", "900", "--max-size", "800"],
     "min_size must be >= 1 and max_size in [min_size", {}),
    ("build-batch-65", lambda w, t: ["build", "--model", f"{w}/export", "--batch", "1:1:65"],
     "batch sizes must be integers in [1, 64]", {}),
    # every path named is used or refused by name (issue 22)
    ("predict-folder-named-like-an-image", lambda w, t: ["predict", "--model", f"{w}/export", "--out", f"{t}/o",
                                                         f"{w}/photo.png", str(_image_dir(w, t))],
     "x.png: is a folder, not an image file", {}),
    ("predict-only-an-empty-folder", lambda w, t: ["predict", "--model", f"{w}/export", "--out", f"{t}/o",
                                                   str(_empty_dir(t))], "empty: folder holds no images", {}),
    # integrity and trust boundaries
    ("tampered-graph", lambda w, t: ["predict", "--model", str(_tamper(w, t)), "--out", f"{t}/o",
                                     f"{w}/photo.png"], "sha256 differs", {}),
    ("graph-outside-folder", lambda w, t: ["predict", "--model", str(_copy_export(
        w, t, lambda d: d["graphs"]["portable"].update(file="../../x/model.onnx"))), "--out", f"{t}/o",
        f"{w}/photo.png"], "must be a file name inside the folder", {}),
    ("export-json-empty-input", lambda w, t: ["predict", "--model", str(_copy_export(
        w, t, lambda d: d.update(input={}))), "--out", f"{t}/o", f"{w}/photo.png"], "input.height is missing", {}),
    ("export-json-no-classes", lambda w, t: ["predict", "--model", str(_copy_export(
        w, t, lambda d: d.update(classes=[]))), "--out", f"{t}/o", f"{w}/photo.png"], "classes must be", {}),
    ("ckpt-config-a-list", lambda w, t: ["export", "--checkpoint", str(_checkpoint(
        w, t, lambda c: c.update(model_config=[1]))), "--out", f"{t}/e"], "model_config must be a dict", {}),
    ("ckpt-min-size-0", lambda w, t: ["eval", "--checkpoint", str(_checkpoint(
        w, t, lambda c: c["model_config"].update(min_size=0))), "--data", f"{w}/data", "--out", f"{t}/m.json"],
     "model_config.min_size must be a positive integer", {}),
    ("resume-without-optimizer", lambda w, t: ["train", "--data", f"{w}/data", "--out", str(_resume_run(w, t)),
                                               "--resume", "--iters", "2"], "train_state lacks optimizer", {}),
    ("parity-checkpoint-other-classes", lambda w, t: ["parity", "--checkpoint", str(_other_classes(w, t)),
                                                      "--model", f"{w}/export", "--data", f"{w}/data", "--out",
                                                      f"{t}/p"], "label 1: id 5 'a' vs id 1 'circle'", {}),
    ("parity-dataset-other-categories", lambda w, t: ["parity", "--checkpoint", f"{w}/ckpt.pt", "--model",
                                                      f"{w}/export", "--data", str(_copy_data(w, t, _renumber_3_as_9)),
                                                      "--out", f"{t}/p"],
     "label 3: id 9 'triangle' vs id 3 'triangle'", {}),
    ("predict-checkpoint-other-classes", lambda w, t: ["predict", "--model", f"{w}/export", "--backend", "torch",
                                                       "--checkpoint", str(_other_classes(w, t)), "--out", f"{t}/o",
                                                       f"{w}/photo.png"], "disagree on the classes", {}),
    # wrong numbers, silently
    ("duplicate-image-ids", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data", str(_copy_data(
        w, t, lambda d: d["images"][1].update(id=d["images"][0]["id"]))), "--out", f"{t}/m.json"],
     "image id 1 appears twice", {}),
    ("duplicate-annotation-ids", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data", str(_copy_data(
        w, t, lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]))), "--out", f"{t}/m.json"],
     "annotation id 1 appears twice", {}),
    ("eval-split-prefix", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data", f"{w}/data", "--split",
                                        "t", "--out", f"{t}/m.json"], "instances_t.json: no such annotation file", {}),
    ("score-threshold-2", lambda w, t: ["predict", "--model", f"{w}/export", "--score-threshold", "2", "--out",
                                        f"{t}/o", f"{w}/photo.png"], "must be in [0, 1], got 2", {}),
    ("score-threshold-nan", lambda w, t: ["predict", "--model", f"{w}/export", "--score-threshold", "nan",
                                          "--out", f"{t}/o", f"{w}/photo.png"], "must be in [0, 1], got nan", {}),
    ("score-floor-2", lambda w, t: _parity(w, t, "--score-floor", "2"), "got 2", {}),
    ("min-detections-0", lambda w, t: _parity(w, t, "--min-detections", "0"),
     "--min-detections: must be a positive integer, got 0", {}),
    ("min-detections-text", lambda w, t: _parity(w, t, "--min-detections", "many"),
     "--min-detections: invalid int value: 'many'", {}),
    ("min-score-pairs-0", lambda w, t: _parity(w, t, "--min-score-pairs", "0"),
     "--min-score-pairs: must be a positive integer, got 0", {}),
    ("resamples-below-100", lambda w, t: _parity(w, t, "--resamples", "50"),
     "--resamples: must be in [100, 100000], got 50", {}),
    ("resamples-text", lambda w, t: _parity(w, t, "--resamples", "many"),
     "--resamples: invalid int value: 'many'", {}),
    # resources
    ("max-detections-above-proposals", lambda w, t: ["export", "--checkpoint", f"{w}/ckpt.pt", "--out", f"{t}/e",
                                                     "--max-detections", "100000"], "exceeds the 300 proposals", {}),
    ("image-above-pixel-limit", lambda w, t: ["predict", "--model", f"{w}/export", "--out", f"{t}/o",
                                              str(_image(t, 300, 200))], "more than the limit",
     {"MASKRT_MAX_IMAGE_PIXELS": "50000"}),
    ("image-2x400", lambda w, t: ["predict", "--model", f"{w}/export", "--out", f"{t}/o", str(_image(t, 400, 2))],
     "resizes to less than one pixel", {}),
    ("fifo-image", lambda w, t: ["predict", "--model", f"{w}/export", "--out", f"{t}/o", str(_fifo(t))],
     "not a regular file", {}),
    # error hygiene
    ("out-is-a-file", lambda w, t: ["export", "--checkpoint", f"{w}/ckpt.pt", "--out", f"{w}/photo.png"],
     "exists and is not a folder", {}),
    ("train-resume-out-is-a-file", lambda w, t: ["train", "--data", f"{w}/data", "--out", f"{w}/photo.png",
                                                 "--resume"], "is not a run folder", {}),
    ("out-under-a-file", lambda w, t: ["data", "shapes", "--out", f"{w}/photo.png/sub"], "is a file", {}),
    ("workers-negative", lambda w, t: ["train", "--data", f"{w}/data", "--out", f"{t}/r", "--workers", "-1"],
     "--workers: must be >= 0", {}),
    ("seed-negative", lambda w, t: ["data", "shapes", "--out", f"{t}/d", "--seed", "-1"], "--seed: must be >= 0", {}),
    ("threads-0", lambda w, t: ["predict", "--model", f"{w}/export", "--threads", "0", "--out", f"{t}/o",
                                f"{w}/photo.png"], "--threads: must be a positive integer", {}),
    ("opset-99", lambda w, t: ["export", "--checkpoint", f"{w}/ckpt.pt", "--out", f"{t}/e", "--opset", "99"],
     "--opset: must be in [17, 20]", {}),
    ("height-not-multiple-of-32", lambda w, t: ["export", "--checkpoint", f"{w}/ckpt.pt", "--out", f"{t}/e",
                                                "--height", "100"], "--height: must be a multiple of 32", {}),
    ("canvas-too-large", lambda w, t: ["export", "--checkpoint", f"{w}/ckpt.pt", "--out", f"{t}/e", "--height",
                                       "99968"], "--height: must be a multiple of 32 in [32, 4096]", {}),
    ("export-batch-100000", lambda w, t: ["export", "--checkpoint", f"{w}/ckpt.pt", "--out", f"{t}/e", "--batch",
                                          "100000"], "--batch: must be in [1, 64]", {}),
    ("parity-data-no-images", lambda w, t: ["parity", "--checkpoint", f"{w}/ckpt.pt", "--model", f"{w}/export",
                                            "--data", str(_empty_dir(t)), "--out", f"{t}/p"],
     "neither a COCO-format dataset", {}),
    ("parity-reference-unknown", lambda w, t: ["parity", "--checkpoint", f"{w}/ckpt.pt", "--model", f"{w}/export",
                                               "--data", f"{w}/data", "--reference", "eager", "--out", f"{t}/p"],
     "invalid choice: 'eager'", {}),
    ("build-size-not-hxw", lambda w, t: ["build", "--model", f"{w}/export", "--out", f"{t}/m.engine",
                                         "--size", "32x32:64:128x128"], "must be HEIGHTxWIDTH", {}),
    ("build-size-two-parts", lambda w, t: ["build", "--model", f"{w}/export", "--out", f"{t}/m.engine",
                                           "--size", "32x32:128x128"], "must be MIN:OPT:MAX", {}),
    ("build-size-outside-range", lambda w, t: ["build", "--model", f"{w}/export", "--out", f"{t}/m.engine",
                                               "--size", "64x64:96x96:100x128"], "outside the export's inputs", {}),
    ("build-batch-on-static", lambda w, t: ["build", "--model", f"{w}/export", "--out", f"{t}/m.engine",
                                            "--batch", "1:1:4"], "max batch 4 does not fit the export (batch 1)", {}),
    ("build-batch-zero", lambda w, t: ["build", "--model", f"{w}/export", "--out", f"{t}/m.engine",
                                       "--batch", "0:1:2"], "batch sizes must be integers in [1, 64]", {}),
    ("ort-device-cuda-without-onnxruntime-gpu", lambda w, t: ["predict", "--model", f"{w}/export", "--device", "cuda",
                                                              "--out", f"{t}/o", f"{w}/photo.png"],
     "--device cuda needs onnxruntime-gpu", {}),
    ("ort-device-cuda-trt-graph", lambda w, t: ["predict", "--model", f"{w}/export", "--device", "cuda", "--graph",
                                                "trt", "--out", f"{t}/o", f"{w}/photo.png"],
     "plugin ops run on the CPU host build", {}),
    ("quantize-no-calibration-images", lambda w, t: ["quantize", "--model", f"{w}/export", "--calibration",
                                                     str(_empty_dir(t)), "--out", f"{t}/q"], "holds no images", {}),
    ("quantize-out-is-the-input", lambda w, t: ["quantize", "--model", f"{w}/export", "--calibration",
                                                f"{w}/data/train", "--out", f"{w}/export", "--force"],
     "is the export folder", {}),
    ("quantize-max-dap-drop-without-data", lambda w, t: ["quantize", "--model", f"{w}/export", "--calibration",
                                                        f"{w}/data/train", "--max-dap-drop", "0.5", "--out", f"{t}/q"],
     "--max-dap-drop needs --data", {}),
    ("quantize-max-dap-drop-negative", lambda w, t: ["quantize", "--model", f"{w}/export", "--calibration",
                                                     f"{w}/data/train", "--max-dap-drop", "-1", "--data", f"{w}/data",
                                                     "--out", f"{t}/q"], "must be >= 0", {}),
    ("quantize-max-dap-drop-on-plain-images", lambda w, t: ["quantize", "--model", f"{w}/export", "--calibration",
                                                            f"{w}/data/train", "--max-dap-drop", "0.5", "--data",
                                                            f"{w}/data/val", "--out", f"{t}/q"],
     "has none", {}),
    ("quantize-another-checkpoint", lambda w, t: ["quantize", "--model", f"{w}/export", "--calibration",
                                                  f"{w}/data/train", "--max-dap-drop", "0.5", "--data", f"{w}/data",
                                                  "--checkpoint", f"{w}/export/export.json", "--out", f"{t}/q"],
     "not the checkpoint this export was made from", {}),
    ("layers-data-and-images", lambda w, t: ["layers", "--model", f"{w}/export", "--data", f"{w}/data", "--images",
                                             f"{w}/data/val", "--out", f"{t}/l"], "not allowed with argument", {}),
    ("layers-reference-and-checkpoint", lambda w, t: ["layers", "--model", f"{w}/export", "--data", f"{w}/data",
                                                      "--reference", f"{w}/export", "--checkpoint", f"{w}/ckpt.pt",
                                                      "--out", f"{t}/l"], "not allowed with argument", {}),
    ("layers-no-int8-graph", lambda w, t: ["layers", "--model", f"{w}/export", "--data", f"{w}/data", "--out",
                                           f"{t}/l"], "portable_int8", {}),
    ("layers-openvino-trt-graph", lambda w, t: ["layers", "--model", f"{w}/export", "--graph", "trt", "--backend",
                                                "openvino", "--data", f"{w}/data", "--out", f"{t}/l"],
     "plugin ops", {}),
    ("layers-images-empty-folder", lambda w, t: ["layers", "--model", f"{w}/export", "--graph", "trt", "--images",
                                                 str(_empty_dir(t)), "--out", f"{t}/l"], "no images", {}),
    ("layers-limit-0", lambda w, t: ["layers", "--model", f"{w}/export", "--data", f"{w}/data", "--limit", "0",
                                     "--out", f"{t}/l"], "must be a positive integer", {}),
    ("layers-tolerance-nan", lambda w, t: ["layers", "--model", f"{w}/export", "--data", f"{w}/data", "--tolerance",
                                           "nan", "--out", f"{t}/l"], "must be >= 0 and finite", {}),
    ("layers-reference-other-input", lambda w, t: ["layers", "--model", f"{w}/export", "--graph", "trt", "--data",
                                                   f"{w}/data", "--reference", str(_fewer_slots(w, t)), "--out",
                                                   f"{t}/l"], "differ from the candidate export's", {}),
    ("bench-images-empty-folder", lambda w, t: ["bench", "run", "--model", f"{w}/export", "--images",
                                                str(_empty_dir(t)), "--iters", "1"], "holds no images", {}),
    ("bench-tensorrt-on-a-folder", lambda w, t: ["bench", "run", "--model", f"{w}/export", "--backend", "tensorrt",
                                                 "--iters", "1"], "--backend tensorrt takes an engine file", {}),
    ("bench-json-is-a-folder", lambda w, t: ["bench", "run", "--model", f"{w}/export", "--json", f"{w}/data",
                                             "--iters", "1"], "is a folder, expected a file name", {}),
    ("bench-compare-without-a-model", lambda w, t: ["bench", "compare", "--iters", "1"],
     "one of the arguments --checkpoint --random is required", {}),
    ("bench-compare-work-holds-an-input", lambda w, t: ["bench", "compare", "--checkpoint", f"{w}/ckpt.pt",
                                                        "--work", str(w), "--iters", "1"],
     "holds the checkpoint", {}),
    ("bench-compare-no-calibration-images", lambda w, t: ["bench", "compare", "--checkpoint", f"{w}/ckpt.pt",
                                                          "--int8", "--calibration", str(_empty_dir(t)),
                                                          "--iters", "1"], "holds no images", {}),
    ("serve-without-pytriton", lambda w, t: ["serve", "--model", f"{w}/export"], "needs PyTriton", {}),
    ("bench-server-nobody-listening", lambda w, t: ["bench", "server", "--server", "http://127.0.0.1:9", "--iters",
                                                    "1"],
     "no server ready", {}),
    ("bench-server-bad-url", lambda w, t: ["bench", "server", "--server", "ftp://127.0.0.1:8000", "--iters",
                                           "1"],
     "must be http://HOST:PORT or grpc://HOST:PORT", {}),
    ("bench-server-and-compare", lambda w, t: ["bench", "server", "--server", "http://127.0.0.1:9", "--random",
                                               "slim"], "unrecognized arguments: --random slim", {}),
    ("serve-port-out-of-range", lambda w, t: ["serve", "--model", f"{w}/export", "--port", "70000"],
     "a port in 1..65535", {}),
    ("bench-concurrency-without-server", lambda w, t: ["bench", "run", "--model", f"{w}/export", "--concurrency",
                                                       "2"], "unrecognized arguments: --concurrency", {}),
    ("triton-max-batch-zero", lambda w, t: ["triton", "--model", f"{w}/export", "--out", f"{t}/repo", "--max-batch",
                                            "0"], "must be a positive integer", {}),
    ("triton-name-with-a-slash", lambda w, t: ["triton", "--model", f"{w}/export", "--out", f"{t}/repo", "--name",
                                               "a/b"], "letters, digits", {}),
    ("triton-missing-model", lambda w, t: ["triton", "--model", f"{t}/nope", "--out", f"{t}/repo"], "not found", {}),
    ("triton-existing-folder", lambda w, t: ["triton", "--model", f"{w}/export", "--out", str(_nonempty(t, "r"))],
     "exists and is not empty", {}),
    ("triton-out-is-the-export", lambda w, t: ["triton", "--model", f"{w}/export", "--out", f"{w}/export",
                                               "--force"], "is the model", {}),
    ("triton-out-holds-the-export", lambda w, t: ["triton", "--model", f"{w}/export", "--out", f"{w}", "--force"],
     "holds the model", {}),
    ("triton-changed-graph", lambda w, t: ["triton", "--model", str(_changed_graph(w, t)), "--out", f"{t}/repo"],
     "sha256 differs", {}),
    ("max-minutes-inf", lambda w, t: ["train", "--data", f"{w}/data", "--out", f"{t}/r", "--max-minutes", "inf"],
     "must be positive and finite", {}),
    ("binary-classes-file", lambda w, t: ["import", "--weights", f"{w}/ckpt.pt", "--out", f"{t}/c.pt",
                                          "--classes", _binary(t)], "not a readable UTF-8 text file", {}),
    ("random-file-as-checkpoint", lambda w, t: ["eval", "--checkpoint", _random_file(t), "--data", f"{w}/data",
                                                "--out", f"{t}/m.json"], "not a readable maskrt checkpoint", {}),
    ("pickle-with-code-as-checkpoint", lambda w, t: ["eval", "--checkpoint", str(_pickle_with_code(t)), "--data",
                                                     f"{w}/data", "--out", f"{t}/m.json"], "refuses to load", {}),
    ("unreadable-image-in-a-worker", lambda w, t: ["train", "--data", str(_unreadable_train_image(w, t)), "--out",
                                                   f"{t}/r", "--iters", "1", "--workers", "1", "-q"],
     "cannot read image", {}),
    # fine-tuning, device and precision (issue 33): refused before the run folder exists
    ("init-missing", lambda w, t: _train(w, t, "--init", f"{t}/nope.pth"), "--init weights file not found", {}),
    ("init-truncated", lambda w, t: _train(w, t, "--init", _truncated(w, t)), "not a readable weights file", {}),
    ("init-not-tensors", lambda w, t: _train(w, t, "--init", _saved(t, {"weights": [1.0, 2.0]})),
     "not a state_dict of tensors", {}),
    ("init-pickled-object", lambda w, t: _train(w, t, "--init", str(_pickle_with_code(t))), "the safe loader refuses",
     {}),
    ("init-other-mask-rcnn-config", lambda w, t: _train(w, t, "--init", _saved(t, _state("slim-c4"))),
     "Mask R-CNN weights of config 'slim-c4', not 'slim' (pass --config slim-c4)", {}),
    ("init-other-classifier", lambda w, t: _train(w, t, "--init", _saved(t, _classifier("mobilenet_v3_large"))),
     "a mobilenet_v3_large classifier's weights; config 'slim' has a resnet18 backbone", {}),
    ("init-checkpoint-of-another-config", lambda w, t: _train(w, t, "--init", f"{w}/ckpt.pt", "--config", "slim-c4"),
     "checkpoint is of config 'slim', not 'slim-c4'", {}),
    ("init-nan-weights", lambda w, t: _train(w, t, "--init", _saved(t, _state("slim", nan=True))),
     "holds 1 non-finite value", {}),
    ("init-nothing-fits", lambda w, t: _train(w, t, "--init", _saved(t, {k: torch.zeros(1) for k in
                                                                       _classifier("resnet18")})),
     "tensors fits the model by name and shape", {}),
    ("init-with-resume", lambda w, t: _train(w, t, "--init", f"{w}/ckpt.pt", "--resume"), "--init starts a new run",
     {}),
    ("trainable-backbone-layers-7", lambda w, t: _train(w, t, "--init", f"{w}/ckpt.pt", "--trainable-backbone-layers",
                                                        "7"), "must be in [0, 6]", {}),
    ("trainable-backbone-layers-6-on-a-resnet", lambda w, t: _train(w, t, "--init", f"{w}/ckpt.pt",
                                                                    "--trainable-backbone-layers", "6"),
     "config 'slim' has 5 backbone stages", {}),
    ("trainable-backbone-layers-without-init", lambda w, t: _train(w, t, "--trainable-backbone-layers", "2"),
     "it needs --init", {}),
    ("amp-without-native-bf16", lambda w, t: _train(w, t, "--amp", "--device", "cpu"),
     "--amp on the CPU needs native bf16", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("device-cuda-without-cuda", lambda w, t: _train(w, t, "--device", "cuda"), "--device cuda:", {}),
    ("eval-device-cuda-without-cuda", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data", f"{w}/data",
                                                    "--out", f"{t}/r/m.json", "--device", "cuda"],
     "--device cuda:", {}),
    ("min-size-above-max-size", lambda w, t: _train(w, t, "--min-size", "96,200"), "each size must be in [32, 128]",
     {}),
    ("min-size-not-a-number", lambda w, t: _train(w, t, "--min-size", "96,big"), "must be image sides in pixels", {}),
    ("shapes-unknown-class", lambda w, t: ["data", "shapes", "--out", f"{t}/r", "--classes", "circle,oval"],
     "shape classes must be distinct names", {}),
    # artifacts used together: one compatibility check before any work (issue 34)
    ("layers-reference-other-classes", lambda w, t: _layers(w, t, "--reference", str(_copy_export(
        w, t, lambda d: d["classes"][0].update(name="blob")))), "disagree on the classes", {}),
    ("layers-reference-other-model", lambda w, t: _layers(w, t, "--reference", str(_copy_export(
        w, t, lambda d: d["model_config"].update(fpn_channels=32)))), "not the same model: model_config.fpn_channels",
     {}),
    ("layers-checkpoint-other-classes", lambda w, t: _layers(w, t, "--checkpoint", str(_checkpoint(w, t, _names_ckpt))),
     "disagree on the classes", {}),
    ("checkpoint-config-field-of-another-type", lambda w, t: ["export", "--checkpoint", str(_checkpoint(
        w, t, lambda c: c["model_config"].update(fpn_channels="64"))), "--out", f"{t}/r"],
     "model_config.fpn_channels must be int", {}),
    ("checkpoint-config-field-of-another-config", lambda w, t: ["export", "--checkpoint", str(_checkpoint(
        w, t, lambda c: c["model_config"].update(res5_channels=128))), "--out", f"{t}/r"],
     "model_config.res5_channels is not a field of config 'slim'", {}),
    ("import-weights-that-do-not-fit", lambda w, t: ["import", "--weights", _saved(t, _misfit_state()), "--out",
                                                     f"{t}/r.pt"], "1 missing (first: backbone.fpn", {}),
    ("quantize-data-without-max-dap-drop", lambda w, t: ["quantize", "--model", f"{w}/export", "--calibration",
                                                         f"{w}/data/train", "--data", f"{w}/data", "--out", f"{t}/r"],
     "--data only serves accuracy control", {}),
    ("quantize-classes-differ-before-calibration", lambda w, t: [
        "quantize", "--model", f"{w}/export", "--calibration", f"{w}/data/train", "--max-dap-drop", "0.5",
        "--checkpoint", f"{w}/ckpt.pt", "--data", str(_copy_data(w, t, _permute_names)), "--out", f"{t}/r"],
     "bad_data/annotations/instances_val.json and", {}),
    ("dataset-class-name-twice", lambda w, t: ["eval", "--checkpoint", f"{w}/ckpt.pt", "--data", str(_copy_data(
        w, t, lambda d: d["categories"][1].update(name=d["categories"][0]["name"]))), "--out", f"{t}/r/m.json"],
     "classes hold the category name 'circle' twice", {}),
    # options that do nothing without another one, or that the command cannot honour (the held-out sweep's finds)
    ("layers-precision-without-openvino", lambda w, t: _layers(w, t, "--precision", "bf16"),
     "--precision bf16 is OpenVINO's inference precision: it needs --backend openvino", {}),
    ("layers-data-is-a-file", lambda w, t: ["layers", "--model", f"{w}/export", "--graph", "portable", "--data",
                                            f"{w}/photo.png", "--out", f"{t}/r"], "photo.png: not a folder", {}),
    ("quantize-split-without-max-dap-drop", lambda w, t: ["quantize", "--model", f"{w}/export", "--calibration",
                                                          f"{w}/data/train", "--split", "train", "--out", f"{t}/r"],
     "--split only serves accuracy control", {}),
    ("parity-layers-images-without-layers", lambda w, t: ["parity", "--checkpoint", f"{w}/ckpt.pt", "--model",
                                                          f"{w}/export", "--data", f"{w}/data", "--layers-images",
                                                          "2", "--out", f"{t}/r"], "add --layers", {}),
    ("parity-without-checkpoint", lambda w, t: ["parity", "--model", f"{w}/export", "--data", f"{w}/data",
                                                "--out", f"{t}/r"], "--checkpoint is required", {}),
    ("parity-runtime-cpp-with-checkpoint", lambda w, t: _parity(w, t, "--runtime", "cpp"),
     "drop --checkpoint and --layers", {}),
    ("parity-runtime-cpp-on-onnxruntime", lambda w, t: ["parity", "--runtime", "cpp", "--backend", "onnxruntime",
                                                        "--model", f"{w}/export", "--data", f"{w}/data", "--out",
                                                        f"{t}/r"], "runs --backend openvino or tensorrt", {}),
    ("bench-size-beyond-the-largest-canvas", lambda w, t: ["bench", "run", "--model", f"{w}/export", "--size",
                                                           "100000", "--iters", "1", "--json", f"{t}/r"],
     "must be in [32, 4096] pixels, got 100000", {}),
    ("bench-checkpoint-without-torch", lambda w, t: ["bench", "run", "--model", f"{w}/export", "--checkpoint",
                                                     f"{w}/ckpt.pt", "--iters", "1", "--json", f"{t}/r"],
     "--checkpoint is the model of --backend torch", {}),
    ("predict-checkpoint-without-torch", lambda w, t: ["predict", "--model", f"{w}/export", "--checkpoint",
                                                       f"{w}/ckpt.pt", "--out", f"{t}/r", f"{w}/photo.png"],
     "--checkpoint is the model of --backend torch", {}),
    ("bench-compare-calibration-without-int8", lambda w, t: ["bench", "compare", "--checkpoint", f"{w}/ckpt.pt",
                                                             "--calibration", f"{w}/data/train", "--iters", "1",
                                                             "--work", f"{t}/r"], "add --int8", {}),
    ("bench-compare-random-and-another-export", lambda w, t: ["bench", "compare", "--random", "slim", "--model",
                                                              f"{w}/export", "--iters", "1", "--work", f"{t}/r"],
     "exported from another checkpoint than the seeded random-init slim model", {}),
    ("build-int8-without-the-trt-int8-graph", lambda w, t: ["build", "--model", f"{w}/export", "--precision", "int8",
                                                            "--builder", "tensorrt-rtx", "--out", f"{t}/r"],
     "has no int8 TensorRT graph (model.trt.int8.onnx)", {}),
    ("build-tf32-with-fp16", lambda w, t: ["build", "--model", f"{w}/export", "--precision", "fp16", "--tf32",
                                           "--builder", "tensorrt-rtx", "--out", f"{t}/r"],
     "--tf32 lets fp32 layers use TF32; an fp16 engine", {}),
    ("build-tf32-with-int8", lambda w, t: ["build", "--model", f"{w}/export", "--precision", "int8", "--tf32",
                                           "--builder", "tensorrt-rtx", "--out", f"{t}/r"],
     "--tf32 lets fp32 layers use TF32; an int8 engine", {}),
]
#: rows whose output (T/r) must not exist afterwards: refused before anything is written
NOTHING_WRITTEN = {row[0] for row in ROWS[ROWS.index(next(r for r in ROWS if r[0] == "init-missing")):]}


def _permute_names(dataset: dict) -> None:
    """Same ids, names of categories 1 and 2 exchanged."""
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    for c in dataset["categories"]:
        c["name"] = {1: names[2], 2: names[1]}.get(c["id"], c["name"])


def _swap_ids(dataset: dict) -> None:
    """Ids 1 and 2 exchanged, with their names and annotations following."""
    swap = {1: 2, 2: 1}
    for c in dataset["categories"]:
        c["id"] = swap.get(c["id"], c["id"])
    for a in dataset["annotations"]:
        a["category_id"] = swap.get(a["category_id"], a["category_id"])


def _names_ckpt(ckpt: dict) -> None:
    ckpt["classes"][0]["name"], ckpt["classes"][1]["name"] = ckpt["classes"][1]["name"], ckpt["classes"][0]["name"]


def _nan_weight(ckpt: dict) -> None:
    ckpt["state_dict"]["backbone.body.layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")


def _full_resume_run(w: Path, t: Path) -> Path:
    (t / "run").mkdir()
    shutil.copy(w / "ckpt.pt", t / "run" / "last.pt")
    return t / "run"


def _nan_graph(w: Path, t: Path) -> Path:
    """The export with one NaN in a convolution weight of model.onnx (its sha256 updated, as a buggy tool would)."""
    import onnx
    from onnx import numpy_helper

    from maskrt.core.files import sha256

    shutil.copytree(w / "export", t / "nan_export")
    graph = onnx.load(t / "nan_export" / "model.onnx")
    conv = [n for n in graph.graph.node if n.op_type == "Conv"][5]
    init = next(i for i in graph.graph.initializer if i.name == conv.input[1])
    weight = numpy_helper.to_array(init).copy()
    weight.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    onnx.save(graph, t / "nan_export" / "model.onnx")
    _edit_json(t / "nan_export" / "export.json",
               lambda d: d["graphs"]["portable"].update(sha256=sha256(t / "nan_export" / "model.onnx")))
    return t / "nan_export"


def _image_dir(w: Path, t: Path) -> Path:
    (t / "x.png").mkdir()
    shutil.copy(w / "photo.png", t / "x.png" / "a.png")
    return t / "x.png"


def _renumber_3_as_9(dataset: dict) -> None:
    for item in dataset["categories"] + dataset["annotations"]:
        key = "id" if "supercategory" in item or "name" in item else "category_id"
        if item.get(key) == 3:
            item[key] = 9


def _changed_graph(w: Path, t: Path) -> Path:
    shutil.copytree(w / "export", t / "export")
    with open(t / "export" / "model.onnx", "ab") as f:
        f.write(b"\0")
    return t / "export"


def _empty_dir(t: Path) -> Path:
    (t / "empty").mkdir()
    (t / "empty" / "notes.txt").write_text("no images here")
    return t / "empty"


def _binary(t: Path) -> str:
    (t / "classes.txt").write_bytes(bytes(range(256)))
    return str(t / "classes.txt")


def _random_file(t: Path) -> str:
    (t / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return str(t / "random.pt")


def _train(w: Path, t: Path, *more: str) -> list[str]:
    """`maskrt train` on the world's data into T/r, one step, with `more` options."""
    return ["train", "--data", f"{w}/data", "--out", f"{t}/r", "--iters", "1", "-q", *more]


def _parity(w: Path, t: Path, *more: str) -> list[str]:
    """`maskrt parity` of the world's checkpoint and export on its data into T/p, with `more` options."""
    return ["parity", "--checkpoint", f"{w}/ckpt.pt", "--model", f"{w}/export", "--data", f"{w}/data", *more,
            "--out", f"{t}/p"]


def _layers(w: Path, t: Path, *more: str) -> list[str]:
    """`maskrt layers` on the world's export and data into T/r, with `more` options."""
    return ["layers", "--model", f"{w}/export", "--graph", "portable", "--data", f"{w}/data", "--out", f"{t}/r",
            "-q", *more]


def _misfit_state() -> dict:
    """A slim state_dict with one FPN tensor missing and one key the model does not have."""
    state = _state("slim")
    state["extra.weight"] = state.pop("backbone.fpn.inner_blocks.0.0.weight")
    return state


def _saved(t: Path, obj: object) -> str:
    torch.save(obj, t / "weights.pth")
    return str(t / "weights.pth")


def _truncated(w: Path, t: Path) -> str:
    data = (w / "ckpt.pt").read_bytes()
    (t / "truncated.pth").write_bytes(data[: len(data) // 2])
    return str(t / "truncated.pth")


def _state(config: str, nan: bool = False) -> dict:
    """A Mask R-CNN state_dict of `config` (3 classes), one weight NaN if `nan`."""
    state = build_model(default_model_config(config, 3)).state_dict()
    if nan:
        state["backbone.body.layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    return state


def _classifier(name: str) -> dict:
    import torchvision.models

    return getattr(torchvision.models, name)().state_dict()


def _resume_run(w: Path, t: Path) -> Path:
    run = t / "run"
    run.mkdir()
    ckpt = torch.load(w / "ckpt.pt", weights_only=True)
    del ckpt["train_state"]["optimizer"]
    torch.save(ckpt, run / "last.pt")
    return run


@pytest.mark.parametrize(("argv", "fragment", "env"), [pytest.param(r[1], r[2], r[3], id=r[0]) for r in ROWS])
def test_bad_input_is_one_clean_error(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv, fragment,
                                      env, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                      request: pytest.FixtureRequest) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = argv(world, tmp_path)
    before = _digest(world)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert _digest(world) == before, "an input file changed"
    assert not _leftovers(world, tmp_path), _leftovers(world, tmp_path)
    if request.node.callspec.id in NOTHING_WRITTEN:
        assert not (tmp_path / "r").exists(), "the output was created before the input was refused"
