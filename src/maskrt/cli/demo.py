"""`maskrt demo`: the end-to-end job on the embedded default (shapes dataset, slim model, export, parity); `--config`
trains another model config on the same data."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskrt.cli.options import add_command, positive_float, positive_int
from maskrt.core.defaults import DEFAULT_MODEL_CONFIG, MODEL_CONFIGS
from maskrt.core.errors import MaskrtError

DEMO_MARKER = ".maskrt-demo"


def cmd_demo(args: argparse.Namespace) -> int:
    from maskrt.export.onnx_export import export_checkpoint
    from maskrt.runtime.parity.compare import Candidate, run_parity_many, summary_line
    from maskrt.training.evaluate import format_metrics
    from maskrt.training.shapes import generate
    from maskrt.training.trainer import Trainer, TrainOptions

    root = Path(args.out)
    data, run, export = root / "data", root / "run", root / "export"
    marker = root / DEMO_MARKER  # the demo replaces its own data, run, export and reports: never someone else's
    own = lambda p: p.name in ("data", "run", "export", DEMO_MARKER) or p.name.startswith(  # noqa: E731
        ("parity_", ".maskrt-"))
    if root.exists() and (not root.is_dir() or not (marker.is_file() or all(map(own, root.iterdir())))):
        raise MaskrtError(f"{root}: exists and is not a folder `maskrt demo` made (no {DEMO_MARKER}); choose a new or "
                          "empty folder")
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by `maskrt demo`, which replaces data/, run/, export/ and parity_*/ here on each run\n")
    if not (data / "annotations" / "instances_val.json").is_file():
        print(f"[1/4] generating the shapes dataset in {data}")
        generate(data, train=400, val=100, size=128, seed=0, progress=not args.quiet, force=True)
    else:
        print(f"[1/4] using the shapes dataset in {data}")
    print(f"[2/4] training the {args.config} model for {args.minutes} minutes in {run}")
    opts = TrainOptions(data=data, out=run, config=args.config, max_minutes=args.minutes, progress=not args.quiet,
                        force=True)
    result = Trainer(opts).train()
    print(f"{args.config} Mask R-CNN, {result.step} steps, val metrics (COCO AP, 0-100):")
    print(format_metrics(result.metrics))
    print(f"[3/4] exporting {run / 'last.pt'} to {export}")
    export_checkpoint(run / "last.pt", export, force=True)
    print(f"[4/4] parity of both graphs against plain torchvision model(images) ({args.parity_images} val images)")
    candidates = [Candidate(export, root / f"parity_{graph}", graph=graph) for graph in ("portable", "trt")]
    reports = run_parity_many(run / "last.pt", candidates, data, limit=args.parity_images, progress=not args.quiet,
                              force=True)  # one reference pass for both graphs
    for report in reports:
        print(summary_line(report))
    print(f"reports: {root}/parity_*/report.md")
    codes = [report["exit_code"] for report in reports]
    return 1 if 1 in codes else max(codes)  # a failed gate first, then inconclusive (3), else 0


def register(sub: argparse._SubParsersAction) -> None:
    """The parser of `maskrt demo`."""
    demo = add_command(sub, "demo", "the end-to-end demo on the embedded default (shapes dataset, slim model)")
    demo.add_argument("--out", default="demo", help="work folder (default ./demo)")
    demo.add_argument("--config", default=DEFAULT_MODEL_CONFIG, choices=MODEL_CONFIGS,
                      help=f"model config to train (default {DEFAULT_MODEL_CONFIG}; README, Model configs)")
    demo.add_argument("--minutes", type=positive_float, default=4.0, help="training budget (default 4)")
    demo.add_argument("--parity-images", type=positive_int, default=50, help="val images checked (default 50)")
    demo.set_defaults(func=cmd_demo, io=lambda a: ([a.out], []))
