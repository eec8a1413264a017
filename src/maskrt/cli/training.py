"""`maskrt data shapes`, `train`, `eval` and `import`: datasets, training and checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskrt.cli.options import (
    add_command,
    add_torch_device,
    backbone_layers,
    image_side,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    size_list,
)
from maskrt.core.artifacts import check_same_classes
from maskrt.core.defaults import DEFAULT_MODEL_CONFIG, MODEL_CONFIGS
from maskrt.core.devices import resolve_device
from maskrt.core.errors import MaskrtError
from maskrt.core.files import write_json
from maskrt.core.outputs import check_output_file
from maskrt.training.shapes import DEFAULT_CLASSES, SHAPES


def cmd_data_shapes(args: argparse.Namespace) -> int:
    from maskrt.training.shapes import generate

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    out = generate(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed,
                   progress=not args.quiet, force=args.force, classes=classes)
    print(f"wrote shapes dataset to {out} ({args.train} train, {args.val} val, {args.size}px, seed {args.seed}, "
          f"classes {','.join(classes)})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from maskrt.training.evaluate import format_metrics
    from maskrt.training.trainer import Trainer, TrainOptions

    opts = TrainOptions(data=Path(args.data), out=Path(args.out), config=args.config,
                        max_minutes=args.max_minutes, iters=args.iters, batch_size=args.batch_size,
                        lr=args.lr, eval_minutes=args.eval_minutes, eval_every=args.eval_every,
                        resume=args.resume, force=args.force, seed=args.seed, workers=args.workers,
                        progress=not args.quiet, save_every_s=args.save_every,
                        init=Path(args.init) if args.init else None,
                        trainable_backbone_layers=args.trainable_backbone_layers, device=args.device, amp=args.amp,
                        min_sizes=[s for group in args.min_size for s in group] if args.min_size else None)
    trainer = Trainer(opts)
    if trainer.rank == 0:
        print(trainer.describe())
    result = trainer.train()
    if trainer.rank == 0:
        print(f"trained {result.step} steps; checkpoints in {opts.out} (last.pt, best.pt)")
        print(format_metrics(result.metrics))
    return 0


def _eval_out(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path(args.checkpoint).with_name(f"eval_{args.split}.json")


def cmd_eval(args: argparse.Namespace) -> int:
    from maskrt.training.checkpoint import load_checkpoint, model_from_checkpoint
    from maskrt.training.coco import load_split
    from maskrt.training.evaluate import evaluate, format_metrics

    out = _eval_out(args)
    check_output_file(out, force=args.force)
    ckpt = load_checkpoint(args.checkpoint)
    dataset = load_split(args.data, args.split, train=False)
    check_same_classes(ckpt["classes"], args.checkpoint, dataset.classes, dataset.ann_file)
    device = resolve_device(args.device)
    model = model_from_checkpoint(ckpt, source=args.checkpoint).to(device)
    metrics = evaluate(model, dataset, progress=not args.quiet, device=device)
    write_json(out, metrics)
    print(format_metrics(metrics))
    print(f"wrote {out}")
    return 0


def _class_names(path: str | None) -> list[str] | None:
    if not path:
        return None
    file = Path(path)
    if not file.is_file():
        raise MaskrtError(f"{file}: class-names file not found")
    try:
        return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise MaskrtError(f"{file}: not a readable UTF-8 text file of class names ({exc})") from None


def cmd_import(args: argparse.Namespace) -> int:
    from maskrt.training.torchvision_import import import_torchvision

    ckpt = import_torchvision(args.weights, args.out, class_names=_class_names(args.classes), min_size=args.min_size,
                              max_size=args.max_size, force=args.force)
    cfg = ckpt["model_config"]
    print(f"wrote {args.out}: config {cfg['name']}, {cfg['num_classes']} classes, norm {cfg['norm']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of this module's commands."""
    data = sub.add_parser("data", help="generate datasets", description="generate datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="KIND")
    shapes = data_sub.add_parser("shapes", help="a COCO-format shapes dataset (deterministic)",
                                 description="Generate a COCO-format instance-segmentation dataset of shapes.")
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--train", type=positive_int, default=400, help="train images (default 400)")
    shapes.add_argument("--val", type=positive_int, default=100, help="val images (default 100)")
    shapes.add_argument("--size", type=image_side, default=128, help="image side in pixels (default 128, min 32)")
    shapes.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed; same seed => identical files (default 0)")
    shapes.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                        help=f"comma-separated shapes, ids 1..K in this order, from {', '.join(SHAPES)} (default "
                        "%(default)s)")
    shapes.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    shapes.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    shapes.set_defaults(func=cmd_data_shapes, io=lambda a: ([a.out], []))

    train = add_command(sub, "train", "train Mask R-CNN on a COCO-format dataset")
    train.add_argument("--data", required=True, help="dataset folder (annotations/instances_{train,val}.json)")
    train.add_argument("--config", default=DEFAULT_MODEL_CONFIG, choices=MODEL_CONFIGS,
                       help=f"model config (default {DEFAULT_MODEL_CONFIG}; README, Model configs)")
    train.add_argument("--out", required=True, help="run folder: last.pt, best.pt, metrics.json")
    train.add_argument("--max-minutes", type=positive_float, help="wall-clock budget in minutes")
    train.add_argument("--iters", type=positive_int, help="total steps (default 2000 without --max-minutes)")
    train.add_argument("--batch-size", type=positive_int, default=2,
                       help="images per step and process (default 2: more updates per minute on a CPU)")
    train.add_argument("--lr", type=positive_float, default=1e-3, help="peak AdamW learning rate")
    train.add_argument("--eval-minutes", type=positive_float, default=3.0,
                       help="evaluate every N minutes (default 3)")
    train.add_argument("--eval-every", type=positive_int, help="evaluate every N steps instead")
    train.add_argument("--save-every", type=non_negative_float, default=30.0, metavar="SECONDS",
                       help="rewrite OUT/last.pt at most this often (default 30; 0 = every step)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("--force", action="store_true",
                       help="delete a non-empty --out run folder and start over (without it, such a folder is refused)")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--workers", type=non_negative_int, default=0, help="data-loader worker processes")
    train.add_argument("--init", metavar="FILE",
                       help="start from pretrained weights: a maskrt checkpoint, a Mask R-CNN state_dict (e.g. "
                       "torchvision's COCO weights) or the config's ImageNet backbone (resnet18 for slim, resnet50 "
                       "for r50-*, mobilenet_v3_large); layers of other classes are re-initialised")
    train.add_argument("--trainable-backbone-layers", type=backbone_layers, metavar="N",
                       help="with --init: train the last N backbone stages, freeze the others (torchvision's meaning: "
                       "0-5 for a ResNet, 0-6 for MobileNetV3; default 3)")
    add_torch_device(train, default="auto")
    train.add_argument("--amp", action="store_true",
                       help="mixed precision: bf16 autocast on a CPU with native bf16 (AVX-512 BF16, AMX) or a GPU "
                       "that has it, fp16 with a gradient scaler on older GPUs; weights stay fp32")
    train.add_argument("--min-size", type=size_list, nargs="+", metavar="SIZE",
                       help="multi-scale training: shorter sides to draw from, one per step (e.g. 96,112,128); "
                       "evaluation and export keep the config's own size")
    train.set_defaults(func=cmd_train, io=lambda a: ([a.out], [("dataset", a.data), ("init weights", a.init)]))

    ev = add_command(sub, "eval", "COCO box and mask AP of a checkpoint (pycocotools)")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", required=True, help="dataset folder")
    ev.add_argument("--split", default="val")
    ev.add_argument("--out", help="metrics JSON (default: eval_SPLIT.json beside the checkpoint)")
    ev.add_argument("--force", action="store_true", help="replace an existing metrics file")
    add_torch_device(ev, default="auto")
    ev.set_defaults(func=cmd_eval, io=lambda a: ([_eval_out(a)], [("checkpoint", a.checkpoint), ("dataset", a.data)]))

    imp = add_command(sub, "import", "convert a Mask R-CNN state_dict file (torchvision's layout, or a maskrt "
                                     "config's) into a maskrt checkpoint")
    imp.add_argument("--weights", required=True, help="e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    imp.add_argument("--out", required=True, help="checkpoint to write")
    imp.add_argument("--classes", help="text file, one class name per line (default: COCO names for 91 labels)")
    imp.add_argument("--min-size", type=positive_int, help="resize: shorter side (default: the config's, e.g. 800)")
    imp.add_argument("--max-size", type=positive_int, help="resize: longest side (default: the config's, e.g. 1333)")
    imp.add_argument("--force", action="store_true", help="replace an existing --out checkpoint")
    imp.set_defaults(func=cmd_import,
                     io=lambda a: ([a.out], [("weights file", a.weights), ("class-names file", a.classes)]))
