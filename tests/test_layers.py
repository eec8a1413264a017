"""`maskrt layers` (issue 26): a per-layer comparison that names the node that broke a graph.

One node's weights scaled (a fault injected into one convolution in the middle of the backbone, or into a head) must
come out first in the ranking by own contribution, on every graph that holds it (portable: against a clean export's
model.onnx; trt: against the export's own model.onnx, the plugin ops in between; portable_int8, `maskrt layers`'
default and accuracy control's input, and trt_int8, TensorRT's: their dequantize scale, against the export's own
model.onnx), by a wide margin over the next entry (MARGIN); a clean run reports zero error. The slim model of the
`world` fixture is untrained, but its detections (scores about 1/4) feed the mask head, so every stage holds real
tensors; each test asserts how much it compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from maskrt.runtime.parity.faults import Fault, inject, scaled_node, scaled_weights
from maskrt.runtime.parity.layers import LayerRequest, compare_layers
from maskrt.runtime.parity.layers_match import matched_tensors, tensor_metrics
from maskrt.runtime.parity.layers_run import weight_sharing

CLI = [sys.executable, "-m", "maskrt.cli"]
#: Where a fault goes: the middle of the backbone, the box head's first fully connected layer, the mask head, and the
#: RPN head's convolution (one weight, called on every FPN level: one node per level in the graph).
SITES = {"backbone": "/backbone/body/layer3/", "box head": "/box_head/", "mask head": "/mask_head/",
         "rpn head": "/rpn_head/conv"}
IMAGES = 2


@pytest.fixture(scope="module")
def int8_export(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world export with model.int8.onnx and model.trt.int8.onnx (`maskrt quantize`, minmax on 4 training
    images): the graph `maskrt layers` compares by default and accuracy control ranks, and TensorRT's."""
    from maskrt.runtime.quantize.calibration import quantize_export

    out = tmp_path_factory.mktemp("layers_int8") / "export"
    quantize_export(world / "export", world / "data" / "train", out, images=4, progress=False)
    return out


def _fault(export: Path, site: str, graph: str, out: Path) -> tuple[Path, str]:
    """A copy of `export` with the weights of the first Conv/Gemm at `site` x1.5 in `graph` only (the INT8 graph:
    their dequantize scale); the node."""
    fault = Fault(f"scaled {site}", "weights", f"{site} weights x1.5", graph=scaled_weights(SITES[site]))
    inject(export, fault, out, graphs=[graph])
    return out, scaled_node(onnx.load(str(export / "model.onnx")).graph, SITES[site])


#: How many times the next entry's own error the scaled node's must be. At fp32 and bf16 the next entries are
#: rounding (fp32: about 1e-6): ten times. The INT8 graph's next entries are INT8's own rounding, which on this
#: untrained model reaches 0.15 relative L2 (the uint8 quantization of the RPN's near-zero objectness logits, the same
#: entry whatever the site), against the scaled node's 0.50 (x1.5): three times.
MARGIN = {"portable": 10.0, "trt": 10.0, "portable_int8": 3.0, "trt_int8": 3.0}


def _first_by_a_margin(ranking: list[dict], node: str, margin: float = 10.0) -> None:
    """`node` ranks first, its own error over 0.1 and more than `margin` times the next entry's."""
    top = [(r["node"], r["contribution"]) for r in ranking[:5]]
    assert ranking[0]["node"] == node, top
    assert ranking[0]["contribution"] > 0.1 and ranking[1]["contribution"] < ranking[0]["contribution"] / margin, top


@pytest.mark.slow
@pytest.mark.parametrize("graph", list(MARGIN))
@pytest.mark.parametrize("site", list(SITES))
def test_a_scaled_node_comes_out_first(world: Path, int8_export: Path, tmp_path: Path, site: str, graph: str
                                       ) -> None:
    export = int8_export if graph.endswith("int8") else world / "export"
    faulted, node = _fault(export, site, graph, tmp_path / "faulted")
    # the portable graph is the reference itself: compare it with the clean export's model.onnx; the others with
    # their export's own model.onnx (the INT8 graph's is the clean fp32 one)
    doc = compare_layers(faulted, tmp_path / "layers", LayerRequest(
        graph=graph, data=world / "data", limit=IMAGES, reference=export if graph == "portable" else None),
        progress=False)
    ranking = doc["ranking"]
    _first_by_a_margin(ranking, node, MARGIN[graph])
    # a weight read by several nodes ranks once, named by its first node, the others listed
    shared = weight_sharing(onnx.load(str(world / "export" / "model.onnx")))
    assert ranking[0].get("same_weights", []) == shared.get(node, [node])[1:]
    assert (site == "rpn head") == bool(ranking[0].get("same_weights"))
    # the evidence: every stage compared, the faulty tensor on real (non-empty) values on every image
    tensors = {t["node"]: t for t in doc["tensors"]}
    stages = {t["stage"] for t in doc["tensors"]}
    assert {"backbone", "FPN", "RPN", "box head", "mask head"} <= stages, stages
    assert doc["compared_tensors"] >= 300 and len(doc["images"]) == IMAGES
    assert len(tensors[node]["per_image"]) == IMAGES and tensors[node]["worst"]["rel_l2"] > 0.1
    if not graph.endswith("int8"):  # nothing before it differs (in an INT8 graph, every quantized node before it does)
        assert doc["first_over_tolerance"]["node"] == node
    for name in ("layers.json", "layers.md", "layers.png"):
        assert (tmp_path / "layers" / name).stat().st_size > 0
    assert f"| 1 | `{node}`" in (tmp_path / "layers" / "layers.md").read_text()


@pytest.mark.slow
def test_a_clean_fp32_run_reports_zero_error(world: Path, tmp_path: Path) -> None:
    """model.onnx against itself: exactly zero everywhere; the TensorRT graph against model.onnx: float rounding only,
    its box and mask heads compared through the plugin ops' outputs."""
    doc = compare_layers(world / "export", tmp_path / "same", LayerRequest(graph="portable", data=world / "data",
                                                                          limit=IMAGES), progress=False)
    assert doc["compared_tensors"] >= 500
    nonzero = [(t["node"], t["worst"], t["contribution"]) for t in doc["tensors"]
               if t["worst"]["max_abs"] != 0.0 or t["contribution"] != 0.0]
    assert not nonzero, nonzero[:3]
    assert doc["first_over_tolerance"] is None and doc["first_shape_mismatch"] is None
    trt = compare_layers(world / "export", tmp_path / "trt", LayerRequest(graph="trt", data=world / "data",
                                                                         limit=IMAGES), progress=False)
    assert trt["compared_tensors"] >= 300
    assert max(t["worst"]["rel_l2"] for t in trt["tensors"] if t["worst"]["rel_l2"] is not None) < 1e-4
    heads = [t for t in trt["tensors"] if t["stage"] in ("box head", "mask head")]
    assert len(heads) >= 10 and any("candidate_name" in t for t in trt["tensors"])  # paired across the plugins


def test_tensor_metrics() -> None:
    import numpy as np

    ref = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]], np.float32)
    assert tensor_metrics(ref.copy(), ref) == {"max_abs": 0.0, "rel_l2": 0.0, "cosine": 1.0}
    m = tensor_metrics(ref * 1.5, ref)
    assert m["rel_l2"] == pytest.approx(0.5) and m["cosine"] == pytest.approx(1.0) and m["max_abs"] == 1.5
    rows = tensor_metrics(np.concatenate([ref, np.zeros((3, 3), np.float32)]), ref)  # padded slots
    assert rows["rows"] == [5, 2] and rows["rel_l2"] == 0.0
    assert "shape" in tensor_metrics(ref.T, ref)
    pad = np.array([1.0, -np.inf], np.float32)
    assert tensor_metrics(pad, pad)["rel_l2"] == 0.0  # the same -inf padding: compared on the rest
    assert tensor_metrics(np.array([1.0, np.nan], np.float32), np.array([1.0, 2.0], np.float32))["nonfinite"] == 1


def test_matching_follows_structure_not_numbers(world: Path) -> None:
    """The TensorRT graph's top-level node numbers shift after its plugin ops: a name alone would pair other
    tensors; pairing follows what computes them."""
    ref = onnx.load(str(world / "export" / "model.onnx"))
    trt = onnx.load(str(world / "export" / "model.trt.onnx"))
    same_names = {n for node in ref.graph.node for n in node.output} & {n for node in trt.graph.node
                                                                        for n in node.output}
    pairs = matched_tensors(ref, trt)
    assert len(pairs) >= 300
    assert len(same_names - set(pairs)) >= 50  # same name, other tensor: not paired
    assert matched_tensors(ref, ref) == {n: n for node in ref.graph.node if node.op_type != "Constant"
                                         for n in node.output} | {i.name: i.name for i in ref.graph.input}


@pytest.mark.slow
def test_cli_and_parity_point_at_the_layer(world: Path, tmp_path: Path) -> None:
    """`maskrt layers` from the command line; a failed `maskrt parity` ends its report.md with that command, and
    `--layers` runs it into REPORT/layers (against a fresh export of the checkpoint)."""
    faulted, node = _fault(world / "export", "mask head", "portable", tmp_path / "faulted")
    proc = subprocess.run([*CLI, "parity", "--checkpoint", str(world / "ckpt.pt"), "--model", str(faulted), "--data",
                           str(world / "data"), "--score-floor", "0.05", "--min-detections", "1", "--layers",
                           "--layers-images", str(IMAGES), "--out", str(tmp_path / "report"), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["verdict"] == "failed" and report["evidence"]["reference_detections_compared"] >= 1
    md = (tmp_path / "report" / "report.md").read_text()
    command = md.rstrip().split("```")[-2].strip()
    assert command.startswith("maskrt layers --model") and "--checkpoint" in command and md.rstrip().endswith("```")
    layers = json.loads((tmp_path / "report" / "layers" / "layers.json").read_text())
    assert layers["ranking"][0]["node"] == node and "exported anew" in layers["reference"]
    assert f"top offender {node}" in proc.stdout
    # the printed command runs as printed (into another folder)
    args = command.split()[2:]
    args[args.index("--out") + 1] = str(tmp_path / "again")
    proc = subprocess.run([*CLI, "layers", *args, "--limit", "1", "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "again" / "layers.json").read_text())["ranking"][0]["node"] == node



@pytest.mark.slow
def test_openvino_gets_the_same_report(world: Path, tmp_path: Path) -> None:
    """OpenVINO f32 (bf16 where the CPU has it) as the candidate: the scaled node still comes out first."""
    from maskrt.runtime.backends.openvino_runtime import cpu_supports_bf16

    faulted, node = _fault(world / "export", "backbone", "portable", tmp_path / "faulted")
    precision = "bf16" if cpu_supports_bf16() else "f32"
    doc = compare_layers(faulted, tmp_path / "layers", LayerRequest(
        graph="portable", backend="openvino", precision=precision, data=world / "data", limit=1,
        reference=world / "export"), progress=False)
    assert doc["candidate"] == {"graph": "portable", "backend": "openvino", "precision": precision,
                                "file": str(faulted / "model.onnx")}
    assert doc["compared_tensors"] >= 300
    _first_by_a_margin(doc["ranking"], node)  # bf16's own rounding (8 significant bits) stays ten times below


@pytest.mark.slow
def test_parity_layers_on_a_passing_graph_names_no_offender(world: Path, tmp_path: Path) -> None:
    """`parity --layers` on a graph that passes every gate compares nothing and says so (no layer report, nothing
    called an offender)."""
    proc = subprocess.run([*CLI, "parity", "--checkpoint", str(world / "ckpt.pt"), "--model", str(world / "export"),
                           "--data", str(world / "data"), "--score-floor", "0.05", "--min-detections", "1",
                           "--min-score-pairs", "1", "--layers", "--out", str(tmp_path / "report"), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "layers: not compared (every gate passed" in proc.stdout and "offender" not in proc.stdout
    assert not (tmp_path / "report" / "layers").exists()
