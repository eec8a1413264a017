"""Prove the parity gate on your own model: inject every fault of maskrt.runtime.parity.faults into copies of an export
and run `maskrt parity` on each graph, on a COCO split and on a folder of the same images; print the table of what the
gates catch (fault x graph x data mode).

    python scripts/parity_faults.py --checkpoint demo/run/last.pt --model demo/export --data demo/data \\
        --work /tmp/faults [--limit 50] [--graphs portable trt] [--faults nms_iou label_map] [--markdown table.md]

The clean export should pass everywhere; a fault that passes a graph's gates is one that precision's gates cannot
see on this model and data (docs/architecture.md section 7 explains why for the faults and graphs of the test suite).
Exit code: 1 when the clean export fails a gate or a fault passes the fp32 graphs' gates; else 3 when the clean
export is INCONCLUSIVE somewhere (too few images for a low-precision graph's dAP interval: give more with --limit);
else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from maskrt.core.artifacts import GRAPHS, ExportInfo
from maskrt.core.errors import MaskrtError
from maskrt.runtime.parity.faults import CLEAN, FAULTS, fault_matrix, format_matrix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the reference checkpoint")
    parser.add_argument("--model", required=True, help="its export folder (all its graphs are checked)")
    parser.add_argument("--data", required=True, help="a COCO-format dataset (its images also make the folder mode)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, help="first N images of the split")
    parser.add_argument("--graphs", nargs="+", choices=list(GRAPHS), help="default: every graph of the export")
    parser.add_argument("--faults", nargs="+", choices=list(FAULTS), help="default: all of them")
    parser.add_argument("--work", required=True, help="folder for the faulty exports and the parity reports")
    parser.add_argument("--figures", action="store_true", help="draw each report's figures too (slower)")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--json", help="also write every row (verdict, reason, failing gates, evidence) to this file")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    for item in (args.checkpoint, args.model, args.data):
        path = Path(item).resolve()
        if work == path or work in path.parents or path in work.parents:
            print(f"error: {args.work}: is, holds or lies inside the input {item}; choose a work folder apart from "
                  "the inputs", file=sys.stderr)
            return 2
    try:
        graphs = args.graphs or list(ExportInfo.read(args.model).graphs)
        names = args.faults or list(FAULTS)
        rows = []
        for k, name in enumerate([CLEAN, *names]):
            start = time.monotonic()
            rows += fault_matrix(args.checkpoint, args.model, args.data, args.work, faults=[] if name == CLEAN else
                                 [name], graphs=graphs, clean=name == CLEAN, split=args.split, limit=args.limit,
                                 figures=args.figures)
            print(f"[{k + 1}/{len(names) + 1}] {name}: {time.monotonic() - start:.0f} s", file=sys.stderr)
    except MaskrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = format_matrix(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    fp32 = [r for r in rows if GRAPHS[r["graph"]][1] == "fp32"]
    clean = [r for r in rows if r["fault"] == CLEAN]
    if any(r["verdict"] == "failed" for r in clean) or any(r["verdict"] != "failed" for r in fp32
                                                             if r["fault"] != CLEAN):
        return 1
    undecided = [r for r in clean if r["verdict"] == "inconclusive"]
    for r in undecided:
        print(f"clean export, {r['graph']} on {r['mode']}: INCONCLUSIVE ({r['reason']})", file=sys.stderr)
    return 3 if undecided else 0


if __name__ == "__main__":
    sys.exit(main())
