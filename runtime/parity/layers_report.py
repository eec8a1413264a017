"""The per-layer report as people read it: layers.md (top offenders, the first tensor over the tolerance) and
layers.png (relative error along the graph, by stage); and the `maskrt layers` command a failed parity report ends
with."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STAGE_COLOURS = {"input": "#7f7f7f", "backbone": "#1f77b4", "FPN": "#2ca02c", "RPN": "#ff7f0e",
                 "box head": "#d62728", "mask head": "#9467bd"}


def layers_command(model: str | Path, graph: str, backend: str, out: str | Path, *, precision: str | None = None,
                   data: str | Path | None = None, split: str | None = None, checkpoint: str | Path | None = None,
                   ) -> str:
    """The `maskrt layers` command line for a graph of an export folder."""
    words = ["maskrt", "layers", "--model", str(model), "--graph", graph, "--backend", backend]
    if backend == "openvino" and precision:
        words += ["--precision", precision]
    if checkpoint is not None:
        words += ["--checkpoint", str(checkpoint)]
    if data is not None:
        words += ["--data", str(data), *(["--split", split] if split and split != "val" else [])]
    return shlex.join([*words, "--out", str(out)])


def parity_layers_target(report: dict[str, Any]) -> dict[str, Any]:
    """What `maskrt layers` compares for a parity report's candidate: its graph on its backend against a fresh export
    of its checkpoint, on its data, into REPORT/layers (an engine: the TensorRT graph of the export folder it lies
    in, on ONNX Runtime)."""
    data = report.get("data") or {}
    target = {"out": Path(report["report_folder"]) / "layers", "data": data.get("path"),
              "split": data.get("split") or "val", "checkpoint": report["checkpoint"]}
    if report["backend"] == "tensorrt":
        return {**target, "model": Path(report["export"]).parent, "backend": "onnxruntime", "precision": "f32",
                "graph": "trt_fp16" if report["precision"] == "fp16" else "trt"}
    return {**target, "model": report["export"], "graph": report["graph"], "backend": report["backend"],
            "precision": report.get("inference_precision") or "f32"}


def parity_layers_command(report: dict[str, Any]) -> str:
    """The `maskrt layers` command for a parity report's candidate (`parity_layers_target`)."""
    t = parity_layers_target(report)
    return layers_command(t["model"], t["graph"], t["backend"], t["out"], precision=t["precision"], data=t["data"],
                          split=t["split"], checkpoint=t["checkpoint"])


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else format(value, spec)


def render_layers_markdown(doc: dict[str, Any]) -> str:
    """layers.md: what was compared, the nodes ranked by their own contribution, the first tensor over the
    tolerance and the first whose shape differs."""
    cand = doc["candidate"]
    lines = [f"# Layers: {cand['backend']} {cand['graph']} ({cand['precision']}) vs fp32 model.onnx on onnxruntime",
             "",
             f"Reference: {doc['reference']}. Candidate: {cand['file']}. {len(doc['images'])} image(s): "
             f"{', '.join(doc['images'])}.",
             "",
             f"{doc['compared_tensors']} float tensors paired and compared ({doc['only_in_candidate']} of the "
             f"candidate's and {doc['only_in_reference']} of the reference's have no counterpart). A node's "
             "contribution is its own error: its piece of the candidate (the node with the quantize/dequantize "
             "pairs and casts in front of it) run alone on the reference's inputs, relative L2 error against the "
             "reference's output, worst over the images - the error it adds, not the error it inherits.",
             "",
             "## Top offenders", "",
             "| rank | node | op | stage | contribution | rel L2 error |", "|---|---|---|---|---|---|"]
    for row in doc["ranking"]:
        same = f" (and {len(row['same_weights'])} more with its weights)" if row.get("same_weights") else ""
        lines.append(f"| {row['rank']} | `{row['node']}`{same} | {row['op']} | {row['stage']} | "
                     f"{_fmt(row['contribution'])} | {_fmt(row['rel_l2'])} |")
    if doc["not_isolated"]:
        lines += ["", f"{doc['not_isolated_count']} node(s) could not be run alone on the reference's inputs (their "
                  "piece of the candidate reads tensors not compared, or the runtime refused it); their error beyond "
                  "their inputs, not ranked:", "",
                  "| node | op | stage | beyond inputs | rel L2 error |", "|---|---|---|---|---|"]
        lines += [f"| `{r['node']}` | {r['op']} | {r['stage']} | {_fmt(r['beyond_inputs'])} | {_fmt(r['rel_l2'])} |"
                  for r in doc["not_isolated"][:5]]
    first = doc["first_over_tolerance"]
    lines += ["", f"First tensor over the tolerance (relative L2 error > {doc['tolerance']:g}): " +
              ("none." if first is None else
               f"`{first['name']}` ({first['op']}, {first['stage']}), relative error {_fmt(first['rel_l2'])}.")]
    selection = doc["first_selection_over_tolerance"]
    if selection is not None:
        lines += ["", f"First selection (top-k, gather, NMS, ...) whose output differs beyond the tolerance: "
                  f"`{selection['name']}` ({selection['op']}, {selection['stage']}), relative error "
                  f"{_fmt(selection['rel_l2'])}: from there on the candidate keeps other boxes or detections."]
    shape = doc["first_shape_mismatch"]
    if shape is not None:
        lines += ["", f"First tensor whose shape differs: `{shape['name']}` (candidate {shape['shapes'][0]}, "
                  f"reference {shape['shapes'][1]}); the detections kept differ from there on."]
    lines += ["", "## Error along the graph", "", "![relative error of each tensor along the graph](layers.png)", "",
              "layers.json holds every compared tensor in graph order (op, node, module path, stage, metrics per "
              "image and worst, contribution)."]
    return "\n".join(lines) + "\n"


def layers_plot(doc: dict[str, Any], path: Path) -> None:
    """Worst relative L2 error of each compared tensor in graph order, coloured by stage (log scale)."""
    figure = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    floor = 1e-9
    by_stage: dict[str, tuple[list[int], list[float]]] = {}
    for t in doc["tensors"]:
        rel = t["worst"]["rel_l2"]
        if t["worst"]["nonfinite_images"]:
            rel = 1e3
        if rel is None:
            continue
        xs, ys = by_stage.setdefault(t["stage"], ([], []))
        xs.append(t["index"])
        ys.append(max(float(rel), floor))
    for stage, (xs, ys) in by_stage.items():
        ax.scatter(xs, ys, s=6, color=STAGE_COLOURS.get(stage, "#000000"), label=stage)
    ax.axhline(doc["tolerance"], color="black", linewidth=0.8, linestyle="--", label="tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("tensor (graph order)")
    ax.set_ylabel("relative L2 error (worst image)")
    cand = doc["candidate"]
    ax.set_title(f"{cand['backend']} {cand['graph']} ({cand['precision']}) vs fp32 model.onnx")
    ax.legend(loc="upper left", fontsize=7, markerscale=2)
    figure.tight_layout()
    figure.savefig(path)
