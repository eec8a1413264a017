"""How far the real-accuracy test fixture's low-precision parity numbers move between training seeds (and, run on each
CPU kind, between instruction sets): the spread every asserted number of the real-accuracy tests needs a margin over.

For each seed: the fixture's recipe (tests/conftest.py ACCURATE: slim at 96 px, 300 training images, 700 steps, two
threads) is trained with that training seed; exported with the fp16 graph; quantized with each calibration variant;
then every candidate - model.onnx (fp32), model.trt.fp16.onnx, each model.int8.onnx on ONNX Runtime, and with
OpenVINO model.onnx in bf16 (where the CPU has it) and the first model.int8.onnx - is gated against one pass of plain
model(images) over the first N validation images for each N of --val. One row per (seed, N, candidate): the dAPs with
their bootstrap intervals, the score-diff tail, recall, precision, median IoUs and the verdict under the candidate's
default gates.

    python scripts/fixture_spread.py --work /tmp/spread --seeds 0 1 2 --val 32 128 \\
        --calibration minmax:32 minmax:64 percentile:32 --json spread.json --markdown spread.md

Run it with nothing else busy on the machine (training is timed by steps, but two torch jobs slow each other badly).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from maskrt.core.machine import machine_facts, machine_line

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import ACCURATE  # noqa: E402  the real-accuracy fixture's recipe, one source (val: --val's largest here)

RECIPE = {"train": ACCURATE["train"], "size": ACCURATE["size"], "data_seed": ACCURATE["seed"],
          "iters": ACCURATE["iters"], "threads": ACCURATE["threads"]}


def _train(data: Path, run: Path, seed: int, iters: int) -> dict:
    from maskrt.training.trainer import Trainer, TrainOptions

    if not (run / "metrics.json").is_file():
        side = RECIPE["size"]
        Trainer(TrainOptions(data=data, out=run, iters=iters, eval_every=10**9, progress=False, force=True, seed=seed,
                             model_overrides={"min_size": side, "max_size": side})).train()
    return json.loads((run / "metrics.json").read_text())


def _row(seed: int, images: int, name: str, report: dict[str, Any]) -> dict[str, Any]:
    s, gates = report["summary"], {g["gate"]: g for g in report["gates"]}
    coco = s["coco"]
    score = next(g for g in report["gates"] if "score diff" in g["gate"])
    return {"seed": seed, "images": images, "candidate": name, "precision": report["precision"],
            "verdict": report["verdict"], "reason": report["reason"],
            "reference_detections": s["reference_detections_above_floor"], "pairs": s["matched_pairs"],
            "dap": {t: coco["delta"][t] for t in ("bbox", "segm")},
            "interval": {t: [coco["interval"][t]["low"], coco["interval"][t]["high"]] for t in ("bbox", "segm")},
            "dap_limit": gates["bbox dAP"]["limit"], "confidence": coco["interval"]["bbox"]["confidence"],
            "score_gate": score["gate"], "score_value": score["value"], "score_limit": score["limit"],
            "score_diff_max": s["score_diff_max"], "score_diff_p99": s["score_diff_p99"],
            "recall": s["recall"], "precision_gate": s["precision"], "box_iou_median": s["box_iou"]["median"],
            "mask_iou_median": s["mask_iou_median"],
            "reference_ap": {t: coco["reference"][t]["AP"] for t in ("bbox", "segm")}}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a table: dAP [interval] per IoU type, the score gate's value, recall/precision, verdict."""
    conf = f"{rows[0]['confidence']:.0%}" if rows else ""
    lines = [f"| seed | images | candidate | bbox dAP [{conf} interval] | segm dAP [{conf} interval] | limit | "
             "score gate (value / limit) | recall / precision | median box / mask IoU | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dap = " | ".join(f"{r['dap'][t]:+.2f} [{r['interval'][t][0]:+.2f}, {r['interval'][t][1]:+.2f}]"
                         for t in ("bbox", "segm"))
        lines.append(f"| {r['seed']} | {r['images']} | {r['candidate']} | {dap} | {r['dap_limit']:g} | "
                     f"{r['score_gate']} {r['score_value']:.3f} / {r['score_limit']:g} ({r['pairs']} pairs) | "
                     f"{r['recall']:.3f} / {r['precision_gate']:.3f} | {r['box_iou_median']:.3f} / "
                     f"{r['mask_iou_median']:.3f} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the data, runs, exports and reports (reused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--val", type=int, nargs="+", default=[32, 128], help="validation images gated (first N)")
    parser.add_argument("--calibration", nargs="+", default=["minmax:32"],
                        help="INT8 calibration variants METHOD:IMAGES (one model.int8.onnx each)")
    parser.add_argument("--iters", type=int, default=RECIPE["iters"])
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO candidates")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args(argv)

    from maskrt.export.onnx_export import export_checkpoint
    from maskrt.runtime.parity.compare import Candidate, run_parity_many
    from maskrt.runtime.quantize.calibration import quantize_export
    from maskrt.training.shapes import generate

    torch.set_num_threads(RECIPE["threads"])
    work = Path(args.work)
    data = work / "data"
    val_file = data / "annotations" / "instances_val.json"
    if not val_file.is_file() or len(json.loads(val_file.read_text())["images"]) < max(args.val):
        generate(data, train=RECIPE["train"], val=max(args.val), size=RECIPE["size"], seed=RECIPE["data_seed"],
                 progress=False, force=True)
    print(f"machine: {machine_line()}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        start = time.monotonic()
        root = work / f"seed{seed}"
        metrics = _train(data, root / "run", seed, args.iters)
        ckpt = root / "run" / "last.pt"
        if not (root / "fp" / "export.json").is_file():
            export_checkpoint(ckpt, root / "fp", fp16=True, force=True)
        candidates: dict[str, Candidate] = {}
        for variant in args.calibration:
            method, images = variant.split(":")
            out = root / f"int8-{method}-{images}"
            if not (out / "export.json").is_file():
                quantize_export(root / "fp", data / "train", out, images=int(images), method=method, progress=False,
                                force=True)
            candidates[f"int8 {variant}"] = (out, "portable_int8", "onnxruntime", "f32")
        first_int8 = candidates[f"int8 {args.calibration[0]}"][0]
        candidates = {"fp32": (root / "fp", "portable", "onnxruntime", "f32"),
                      "fp16": (root / "fp", "trt_fp16", "onnxruntime", "f32"), **candidates}
        if not args.no_openvino:
            from maskrt.runtime.backends.openvino_runtime import cpu_supports_bf16

            if cpu_supports_bf16():
                candidates["openvino bf16"] = (root / "fp", "portable", "openvino", "bf16")
            candidates["openvino int8"] = (first_int8, "portable_int8", "openvino", "f32")
        for images in args.val:
            specs = [Candidate(model, root / "reports" / str(images) / name.replace(" ", "_").replace(":", "-"),
                               backend=backend, graph=graph, precision=precision)
                     for name, (model, graph, backend, precision) in candidates.items()]
            reports = run_parity_many(ckpt, specs, data, limit=images, progress=False, force=True, figures=False)
            rows += [_row(seed, images, name, report) for name, report in zip(candidates, reports, strict=True)]
        print(f"seed {seed}: segm AP {metrics['segm']['AP']}, bbox AP {metrics['bbox']['AP']} "
              f"({time.monotonic() - start:.0f} s)", file=sys.stderr)
        print(markdown([r for r in rows if r["seed"] == seed]), file=sys.stderr)
    doc = {"machine": machine_facts(), "recipe": {**RECIPE, "iters": args.iters}, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(f"Machine: {machine_line()}\n\n" + markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
