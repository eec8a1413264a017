"""`maskrt bench compare`: the deployed graphs against what they replace, measured side by side in one run.

For one checkpoint, on one machine with the same threads everywhere, each candidate runs the same images end to end
(the image as HxWx3 uint8 in, detections on the original image out):

- `eager`: torchvision's ``model(images)`` as its user calls it (its transform, inference and mask paste); its stages
  come from forward hooks that only read the clock (pre-process until the backbone starts, network until the RoI
  heads return, paste after);
- `torchvision_onnx`: torchvision's own ONNX export (``torch.onnx.export`` of the same model) on ONNX Runtime; its
  graph resizes, normalises and pastes itself, so its network time is the whole graph;
- `portable`, `trt`, `portable_int8`, `trt_int8`: model.onnx fp32, model.trt.onnx fp32 (the plugin ops on their host
  build), model.int8.onnx and model.trt.int8.onnx (`maskrt quantize`) through the Predictor: pre-process, network,
  paste (runtime/bench/run.py);
- `openvino_f32`, `openvino_bf16`, `openvino_int8`: model.onnx in f32 and in bf16 (where the CPU has native bf16)
  and model.int8.onnx, each on OpenVINO's CPU plugin through the same Predictor (runtime/backends/openvino_runtime.py);
- `cpp_openvino_f32`: the C++ runtime (maskrt-infer, runtime/cpp) on model.onnx, OpenVINO f32, same threads: its
  Predictor::predict per image, from the decoded image to the pasted masks (runtime/bench/rows.py);
- the network parts alone (fp32, ONNX Runtime): backbone+FPN on the first image's padded batch, the RPN head on its
  features, the box head on its post-NMS proposals and the mask head on its detections (eager's count), each
  exported on its own. Their sum is the work no deployment of this model avoids.

Runs alternate: every round runs each candidate and part once on the round's image (the images cycle), starting one
job further along each round so that drift and cache effects spread evenly; warm-up rounds are not counted. The
ratios come from the p50s of this one run: speed-up over eager and over torchvision-ONNX, and end to end over the sum
of the network parts' p50s. Every ONNX Runtime session here blocks its idle workers at once
(session.intra_op.allow_spinning = 0): with several sessions and torch in one process, the workers a session leaves
spin-waiting take the cores from the next candidate (measured on the trained slim model, 2 cores: eager p50 130 ms
and p90 1.7 s with spinning, 29 ms and 35 ms without).

Without `--checkpoint`, `random_checkpoint` makes a seeded random-init one whose box classifier is scaled so that
every image fills its detection slots (100 detections), and a seeded random SxS image is the input.
"""

from __future__ import annotations

import datetime
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from maskrt.core.artifacts import GRAPHS, ExportInfo
from maskrt.core.errors import MaskrtError
from maskrt.core.files import sha256
from maskrt.core.outputs import check_apart, check_output_dir
from maskrt.export.deploy import DeployMaskRCNN
from maskrt.export.onnx_export import export_checkpoint
from maskrt.runtime.backends.ort_session import session_options
from maskrt.runtime.bench.rows import NATIVE_LABEL, NATIVE_ROW, native_row, openvino_candidates
from maskrt.runtime.bench.run import STAGES, backend_versions, machine, percentiles, synthetic_images, timed_predict
from maskrt.runtime.predictor import Predictor
from maskrt.runtime.preprocess import to_tensor
from maskrt.training.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from maskrt.training.models import build_model, default_model_config

#: The candidates, in table order, with their labels.
CANDIDATES = {
    "eager": "torchvision eager `model(images)`",
    "torchvision_onnx": "torchvision's ONNX export on ONNX Runtime",
    "portable": "maskrt model.onnx fp32",
    "trt": "maskrt model.trt.onnx fp32 (host plugins)",
    "portable_int8": "maskrt model.int8.onnx INT8",
    "trt_int8": "maskrt model.trt.int8.onnx INT8 (TensorRT's Q/DQ, host plugins)",
    "openvino_f32": "OpenVINO, maskrt model.onnx, f32",
    NATIVE_ROW: NATIVE_LABEL,
    "openvino_bf16": "OpenVINO, maskrt model.onnx, bf16",
    "openvino_int8": "OpenVINO, maskrt model.int8.onnx INT8",
}
RANDOM_CLASSES = 90  # COCO's count: the box and mask predictors have COCO's size
RANDOM_CLASSIFIER_SCALE = 6.0  # spreads the random classifier's softmax so that >= 100 boxes pass the 0.05 floor

#: One timed call: seconds per stage (None where the candidate has no such separate stage) and detections per image.
Timing = tuple[dict[str, float | None], int]


def random_checkpoint(path: Path, config: str, seed: int = 0) -> Path:
    """A seeded random-init checkpoint of `config` with COCO's 90 classes whose box classifier weights are scaled
    (x6) so that its scores spread above torchvision's 0.05 score threshold: each image fills its 100 detection
    slots, the most work the post-processing can have."""
    torch.manual_seed(seed)
    cfg = default_model_config(config, RANDOM_CLASSES)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(RANDOM_CLASSIFIER_SCALE)
    classes = [{"id": i, "name": str(i)} for i in range(1, RANDOM_CLASSES + 1)]
    save_checkpoint(path, make_checkpoint(model_config=cfg, state_dict=model.state_dict(), classes=classes))
    return path


class _Eager:
    """torchvision's ``model([image])``, its stages read by hooks that only note the time."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.marks = model.eval(), {}
        model.backbone.register_forward_pre_hook(lambda *_: self.marks.__setitem__("network", time.perf_counter()))
        model.roi_heads.register_forward_hook(lambda *_: self.marks.__setitem__("paste", time.perf_counter()))

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Timing:
        t0 = time.perf_counter()
        out = self.model([to_tensor(image)])[0]
        t3 = time.perf_counter()
        t1, t2 = self.marks["network"], self.marks["paste"]
        return {"preprocess": t1 - t0, "network": t2 - t1, "paste": t3 - t2, "end_to_end": t3 - t0}, len(out["scores"])


def _session(path: Path, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def _onnx_export(module: nn.Module, args: tuple, path: Path, names: list[str], **kwargs: Any) -> None:
    """Export `module` for inference. It is put in eval mode first: torch.onnx.export restores the mode a module had,
    recursively, so a new wrapper (train mode by default) around the model's heads would leave their BatchNorm layers
    in train mode afterwards, and the eager candidate would run on batch statistics (C4's res5, v2's heads)."""
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names, **kwargs)


class _TorchvisionOnnx:
    """torchvision's own ONNX graph of the model (resize, normalisation and paste inside) on ONNX Runtime."""

    def __init__(self, model: nn.Module, example: np.ndarray, path: Path, threads: int) -> None:
        _onnx_export(model, ([to_tensor(example)],), path, ["image"],
                     output_names=["boxes", "labels", "scores", "masks"],
                     dynamic_axes={"image": {1: "height", 2: "width"}})
        self.session = _session(path, threads)

    def __call__(self, image: np.ndarray) -> Timing:
        t0 = time.perf_counter()
        tensor = to_tensor(image).numpy()
        t1 = time.perf_counter()
        _, _, scores, _ = self.session.run(None, {"image": tensor})
        t2 = time.perf_counter()
        return {"preprocess": t1 - t0, "network": t2 - t1, "paste": None, "end_to_end": t2 - t0}, len(scores)


class _Deployed:
    """One of our graphs through the Predictor (runtime/bench/run.py's stages)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def __call__(self, image: np.ndarray) -> Timing:
        seconds, detections, _ = timed_predict(self.predictor, [image])
        return dict(seconds), len(detections[0])


class _Heads(nn.Module):
    def __init__(self, head: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.head, self.predictor = head, predictor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.predictor(self.head(x))


def _parts(model: nn.Module, predictor: Predictor, image: np.ndarray, detections: int, work: Path,
           threads: int) -> dict[str, Callable[[], object]]:
    """The network parts of the first image, each exported alone and run on ONNX Runtime."""
    canvas, sizes = predictor.preprocessor([image])
    deploy = DeployMaskRCNN(model, height=int(canvas.shape[-2]), width=int(canvas.shape[-1]))
    with torch.no_grad():
        feats = list(deploy.backbone(canvas).values())
        _, kept = deploy.proposals(feats, canvas, sizes)
    proposals, channels = int(kept.sum()), feats[0].shape[1]
    gen = torch.Generator().manual_seed(0)
    box_side, mask_side = deploy.box_spec.output_size, deploy.mask_spec.output_size  # 7 / 14; C4: 14 / 14
    parts: dict[str, tuple[nn.Module, list[torch.Tensor]]] = {
        "backbone+FPN" if len(feats) > 1 else "backbone": (deploy.backbone, [canvas]),
        "RPN head": (deploy.rpn_head, feats),
        f"box head ({proposals} RoIs)": (_Heads(deploy.box_head, deploy.box_predictor),
                                        [torch.randn(proposals, channels, *box_side, generator=gen)]),
    }
    if detections:
        parts[f"mask head ({detections} RoIs)"] = (_Heads(deploy.mask_head, deploy.mask_predictor),
                                                   [torch.randn(detections, channels, *mask_side, generator=gen)])
    runs: dict[str, Callable[[], object]] = {}
    for i, (name, (module, inputs)) in enumerate(parts.items()):
        names = [f"in{j}" for j in range(len(inputs))]
        args = (inputs,) if name == "RPN head" else tuple(inputs)  # the RPN head takes the list of feature maps
        _onnx_export(module, args, work / f"part{i}.onnx", names)
        feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
        session = _session(work / f"part{i}.onnx", threads)
        runs[name] = lambda s=session, f=feed: s.run(None, f)
    return runs


class _Steps:
    """Progress lines on stderr for the setup steps, with their durations (kept for the record)."""

    def __init__(self, progress: bool) -> None:
        self.progress, self.seconds = progress, {}

    def __call__(self, key: str, what: str, fn: Callable[[], Any]) -> Any:
        if self.progress:
            print(f"{what} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = fn()
        self.seconds[key] = round(time.perf_counter() - t0, 1)
        if self.progress:
            print(f"  {what}: {self.seconds[key]} s", file=sys.stderr, flush=True)
        return result


def _export_dir(export: Path | None, checkpoint: Path, work: Path, steps: _Steps, model: str) -> Path:
    """The checkpoint's dynamic-size export: `export` when given (checked to be this checkpoint's), else a new one."""
    if export is None:
        steps("export_s", "exporting model.onnx and model.trt.onnx (maskrt export)",
              lambda: export_checkpoint(checkpoint, work / "export",
                                        max_detections=int(load_checkpoint(checkpoint)["model_config"].get(
                                            "box_detections_per_img", 100))))
        return work / "export"
    info = ExportInfo.read(export)
    if info.checkpoint["sha256"] != sha256(checkpoint):
        raise MaskrtError(f"{export}: exported from another checkpoint than {model} (export.json's sha256)")
    if not info.input.dynamic_size:
        raise MaskrtError(f"{export}: a static-canvas export; the comparison runs each image at torchvision's own "
                          "padded size (export without --height/--width)")
    return export


def run_compare(*, checkpoint: str | Path | None = None, random_config: str | None = None,
                export: str | Path | None = None, images: list[np.ndarray] | None = None, size: int = 800,
                threads: int | None = None, warmup: int = 1, iters: int = 5, int8: bool = False,
                calibration: str | Path | None = None, work: str | Path | None = None, force: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Time every candidate and part side by side (see the module docstring); returns the record `format_compare`
    prints. `checkpoint` or `random_config` (a seeded random-init checkpoint, 100 detections per image) names the
    model; `export` an existing export of it (else one is made in `work`, a temporary folder by default); `images`
    the inputs (default: one seeded random `size`x`size` image). INT8 is timed when the export has model.int8.onnx,
    or made with `maskrt quantize` calibrated on `calibration` (default: the benchmark images) when `int8`."""
    if (checkpoint is None) == (random_config is None):
        raise MaskrtError("give either a checkpoint or a random-init config to compare")
    if iters < 1 or warmup < 0:
        raise MaskrtError(f"iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    torch_threads = torch.get_num_threads()
    threads = threads or torch_threads
    temporary = tempfile.TemporaryDirectory(prefix="maskrt-compare-") if work is None else None
    if work is not None:  # --force empties it
        check_apart([work], [("checkpoint", checkpoint), ("export", export), ("calibration folder", calibration)])
    root = Path(temporary.name) if temporary else check_output_dir(work, force=force)
    if root.is_dir() and not temporary:  # --force: start from an empty work folder
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    try:
        return _compare(_Request(checkpoint=Path(checkpoint) if checkpoint else None, random_config=random_config,
                                 export=Path(export) if export else None, images=images, size=size, threads=threads,
                                 warmup=warmup, iters=iters, int8=int8,
                                 calibration=Path(calibration) if calibration else None, work=root,
                                 progress=progress))
    except MaskrtError:  # bad input found on the way (another model's export, ...): leave nothing in --work
        if not temporary:
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(torch_threads)
        if temporary:
            temporary.cleanup()


@dataclass
class _Request:
    """What `run_compare` was asked to time (its arguments, resolved), handed down the chain as one object."""

    checkpoint: Path | None
    random_config: str | None
    export: Path | None
    images: list[np.ndarray] | None
    size: int
    threads: int
    warmup: int
    iters: int
    int8: bool
    calibration: Path | None
    work: Path
    progress: bool


def _compare(req: _Request) -> dict[str, Any]:
    steps, work, progress, threads = _Steps(req.progress), req.work, req.progress, req.threads
    if req.random_config is not None:
        req.checkpoint = random_checkpoint(work / f"random-{req.random_config}.pt", req.random_config)
    checkpoint = req.checkpoint
    assert checkpoint is not None
    if req.images is None:
        req.images = synthetic_images(1, req.size, req.size)
    images = req.images
    if not images:
        raise MaskrtError("no images to benchmark")
    calibration = req.calibration
    model = f"the seeded random-init {req.random_config} model" if req.random_config else str(checkpoint)
    export_dir = _export_dir(req.export, checkpoint, work, steps, model)
    int8_dir = export_dir if "portable_int8" in ExportInfo.read(export_dir).graphs else None
    if req.int8 and int8_dir is None:
        from maskrt.runtime.quantize.calibration import quantize_export

        if calibration is None:  # the benchmark images, as files
            from PIL import Image

            calibration = work / "calibration"
            calibration.mkdir()
            for i, image in enumerate(images):
                Image.fromarray(image).save(calibration / f"{i:04d}.png")
        int8_dir = work / "export-int8"
        steps("quantize_s", "quantizing model.onnx to INT8 (maskrt quantize)",
              lambda: quantize_export(export_dir, calibration, int8_dir, progress=progress))
    model = model_from_checkpoint(load_checkpoint(checkpoint), source=checkpoint).eval()
    tv_onnx = steps("torchvision_onnx_export_s", "exporting torchvision's own ONNX graph",
                    lambda: _TorchvisionOnnx(model, images[0], work / "torchvision.onnx", threads))
    runners: dict[str, Callable[[np.ndarray], Timing]] = {"eager": _Eager(model), "torchvision_onnx": tv_onnx}
    graphs = {"portable": export_dir, "trt": export_dir}
    if int8_dir is not None:
        graphs["portable_int8"] = int8_dir
        if "trt_int8" in ExportInfo.read(int8_dir).graphs:
            graphs["trt_int8"] = int8_dir
    predictors: dict[str, Predictor] = {}
    native = native_row(export_dir, work, threads) if "openvino_f32" in (ov := openvino_candidates(export_dir,
                                                                                                   int8_dir)) else None
    try:
        for g, d in graphs.items():
            predictors[g] = Predictor.from_export(d, graph=g, threads=threads, spinning=False)
        for name, (d, g, p) in ov.items():
            predictors[name] = Predictor.from_export(d, backend="openvino", graph=g, threads=threads, precision=p)
        return _timed(req, export_dir, steps, model, {**runners, **({NATIVE_ROW: native} if native else {})},
                      predictors)
    finally:  # sessions, models and maskrt-infer released here, not whenever the garbage collector gets to them
        for predictor in predictors.values():
            predictor.close()
        if native is not None:
            native.close()


def _timed(req: _Request, export_dir: Path, steps: _Steps, model: nn.Module,
           runners: dict[str, Callable[[np.ndarray], Timing]], predictors: dict[str, Predictor]) -> dict[str, Any]:
    """Run the candidates and parts alternated, `warmup` + `iters` rounds, and make the record."""
    images, threads, warmup, iters, work = req.images or [], req.threads, req.warmup, req.iters, req.work
    runners.update({g: _Deployed(p) for g, p in predictors.items()})
    first_detections = runners["eager"](images[0])[1]
    parts = steps("parts_export_s", "exporting the network parts alone",
                  lambda: _parts(model, predictors["portable"], images[0], first_detections, work, threads))

    jobs: list[tuple[str, Callable[[np.ndarray], Any]]] = [*runners.items()]
    jobs += [(f"part:{name}", lambda _image, run=run: run()) for name, run in parts.items()]
    times: dict[str, dict[str, list[float]]] = {name: {} for name, _ in jobs}
    counts: dict[str, dict[int, int]] = {name: {} for name in runners}
    for r in tqdm(range(warmup + iters), desc="compare", unit="round", disable=not req.progress):
        index = (r - warmup) % len(images) if r >= warmup else r % len(images)
        for name, job in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
            t0 = time.perf_counter()
            out = job(images[index])
            seconds = out[0] if name in runners else {"end_to_end": time.perf_counter() - t0}
            if r < warmup:
                continue
            for stage, value in seconds.items():
                if value is not None:
                    times[name].setdefault(stage, []).append(value)
            if name in runners:
                counts[name][index] = out[1]
    return _record(req, export_dir, predictors["portable"], times, counts, steps.seconds)


def _record(req: _Request, export_dir: Path, predictor: Predictor, times: dict[str, dict[str, list[float]]],
            counts: dict[str, dict[int, int]], setup: dict[str, float]) -> dict[str, Any]:
    checkpoint, random_config, images = req.checkpoint or Path(), req.random_config, req.images or []
    threads, warmup, iters = req.threads, req.warmup, req.iters
    info = ExportInfo.read(export_dir)
    padded = predictor.preprocessor([images[0]])[0].shape[-2:]
    p50 = {name: percentiles(t["end_to_end"])["p50_ms"] for name, t in times.items()}
    parts = {name.removeprefix("part:"): percentiles(t["end_to_end"]) for name, t in times.items()
             if name.startswith("part:")}
    parts_sum = round(sum(p["p50_ms"] for p in parts.values()), 3)
    candidates = {}
    for name in (n for n in CANDIDATES if n in counts):
        per_image = [counts[name][i] for i in sorted(counts[name])]
        candidates[name] = {
            "label": CANDIDATES[name],
            "stages": {stage: percentiles(times[name][stage]) for stage in (*STAGES, "end_to_end")
                       if stage in times[name]},
            "detections": {"per_image": per_image, "mean": round(float(np.mean(per_image)), 2)},
            "x_eager": round(p50["eager"] / p50[name], 3),
            "x_torchvision_onnx": round(p50["torchvision_onnx"] / p50[name], 3),
            "end_to_end_over_parts": round(p50[name] / parts_sum, 3),
        }
    if random_config is not None:
        model = (f"{random_config}, seeded random init (box classifier x{RANDOM_CLASSIFIER_SCALE:g}: every image "
                 "fills its detection slots)")
    else:
        model = f"{info.model_config['name']} checkpoint {checkpoint.name}"
    return {
        "model": model, "checkpoint": {"file": str(checkpoint), "sha256": sha256(checkpoint)},
        "export": str(export_dir), "graphs": {g: GRAPHS[g].file for g in candidates if g in GRAPHS},
        "images": len(images), "image_sizes": sorted({(int(i.shape[0]), int(i.shape[1])) for i in images}),
        "padded_size": [int(padded[0]), int(padded[1])], "threads": threads, "onnxruntime_spinning": False,
        "warmup": warmup, "iters": iters,
        "candidates": candidates, "parts": parts, "parts_sum_p50_ms": parts_sum, "setup_seconds": setup,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(threads), "versions": backend_versions("compare"),
    }


def _cell(stages: dict[str, Any], stage: str, absent: str = "in graph") -> str:
    return f"{stages[stage]['p50_ms']:.1f}" if stage in stages else absent


def format_compare(result: dict[str, Any]) -> str:
    """The record as markdown: the candidates with their stages and ratios, then the network parts."""
    sizes = ", ".join(f"{w}x{h}" for h, w in result["image_sizes"])
    ph, pw = result["padded_size"]
    m, v = result["machine"], result["versions"]
    lines = [
        f"{result['model']}; {result['images']} image(s) of {sizes} (first padded to {pw}x{ph}); "
        f"{result['threads']} threads; {result['warmup']} warm-up + {result['iters']} alternated rounds",
        f"{m['processor']} ({m['cpus']} CPUs), {result['date'][:10]}; torch {v.get('torch')}, torchvision "
        f"{v.get('torchvision')}, onnxruntime {v.get('onnxruntime')}, openvino {v.get('openvino', 'not installed')}",
        "",
        "| | end to end p50 ms | p90 ms | pre-process p50 | network p50 | paste p50 | detections / image "
        "| x eager | x torchvision-ONNX | end to end / parts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["candidates"].values():
        s = c["stages"]
        lines.append(f"| {c['label']} | {s['end_to_end']['p50_ms']:.1f} | {s['end_to_end']['p90_ms']:.1f} "
                     f"| {_cell(s, 'preprocess', 'in C++')} | {_cell(s, 'network', 'in C++')} "
                     f"| {_cell(s, 'paste', 'in graph' if 'network' in s else 'in C++')} "
                     f"| {c['detections']['mean']:g} | {c['x_eager']:.2f}x | {c['x_torchvision_onnx']:.2f}x "
                     f"| {c['end_to_end_over_parts']:.2f}x |")
    lines += ["", "| network part alone (fp32, ONNX Runtime) | p50 ms | p90 ms |", "|---|---:|---:|"]
    for name, p in result["parts"].items():
        lines.append(f"| {name} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} |")
    lines.append(f"| sum | {result['parts_sum_p50_ms']:.1f} | |")
    return "\n".join(lines)
