"""The parity report as people read it: report.md and the one-line summary `maskrt parity` prints."""

from __future__ import annotations

from typing import Any

#: Missed and extra detections listed in report.md (report.json keeps more).
LISTED_IN_MARKDOWN = 20


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


_STATUS = {"pass": "pass", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "no data": "no data"}


def _evidence(gate: dict[str, Any]) -> str:
    """What a gate's value rests on: a dAP's interval, a |score diff| tail's pairs."""
    if "interval" in gate:
        low, high = gate["interval"]
        return f" (dAP {gate['delta']:+.4g}, interval [{_fmt(low, '+.3f')}, {_fmt(high, '+.3f')}])"
    if "pairs" in gate:
        return f" (over {gate['pairs']} pairs)"
    return ""


def _detection_rows(title: str, rows: list[dict[str, Any]], total: int, what: str) -> list[str]:
    """A markdown table of missed or extra detections (the highest scores first)."""
    if not total:
        return [f"{title}: none."]
    shown = rows[:LISTED_IN_MARKDOWN]
    more = f"; the {len(shown)} highest scores" if total > len(shown) else ""
    lines = [f"{title}: {total} ({what}){more}:", "", "| image | class | score | box (x1, y1, x2, y2) |",
             "|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['name']} | {r['score']:.3f} | {', '.join(f'{v:.1f}' for v in r['box'])} |"
              for r in shown]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """A short human-readable report: verdict, evidence, gates, AP, missed and extra detections, raw-output errors
    and the figures."""
    s = report["summary"]
    verdict = report["verdict"].upper()
    inp = report["input"]
    size = "dynamic height/width" if inp["dynamic_size"] else f"static canvas {inp['height']}x{inp['width']}"
    floor = report["tolerances"]["score_floor"]
    lines = [
        f"# Parity: {report['backend']} ({report['graph']} graph) vs {report['reference']} reference — {verdict}",
        "",
        f"**{verdict}**: {report['reason']}.",
        "",
        f"Reference: {report['reference_is']}. Candidate: {report['backend']} on {report['graph']} graph "
        f"({size}).",
        "",
        f"{s['images']} images; {s['reference_detections_above_floor']} reference and "
        f"{s['candidate_detections_above_floor']} candidate detections at or above the score floor {floor} "
        f"(a run needs at least {report['evidence']['min_detections']} reference detections to pass).",
        "",
        "| gate | value | limit | result |",
        "|---|---|---|---|",
    ]
    for g in report["gates"]:
        result = _STATUS.get(g.get("status"), {True: "pass", False: "FAIL", None: "no data"}[g["passed"]])
        lines.append(f"| {g['gate']} | {_fmt(g['value'], '.6g')}{_evidence(g)} | {g['op']} {g['limit']} | {result} |")
    undecided = [g for g in report["gates"] if g.get("why")]
    if undecided:
        lines += [""] + [f"- {g['gate']}: {g['why']}." for g in undecided]
    if s["coco"] is not None:
        coco = s["coco"]
        conf = next(iter(coco["interval"].values()))
        lines += ["", f"| COCO AP | reference | candidate | delta | {conf['confidence']:.0%} interval of delta |",
                  "|---|---|---|---|---|"]
        for t in ("bbox", "segm"):
            iv = coco["interval"][t]
            lines.append(f"| {t} | {coco['reference'][t]['AP']:.3f} | {coco['candidate'][t]['AP']:.3f} | "
                         f"{coco['delta'][t]:+.4f} | [{_fmt(iv['low'], '+.3f')}, {_fmt(iv['high'], '+.3f')}] |")
        lines += ["", f"The interval: paired bootstrap over the {coco['images']} images ({conf['resamples']} "
                  f"resamples, seed {conf['seed']}; the same images drawn for both sides, pycocotools' AP on each). A "
                  "dAP gate passes only when its interval lies within the limit."]
    else:
        lines += ["", "No annotations (a folder of images): no COCO AP; the detection-level gates decide."]
    lines += ["", f"Matched pairs: {s['matched_pairs']}; box IoU min {_fmt(s['box_iou']['min'], '.6f')} / median "
              f"{_fmt(s['box_iou']['median'], '.6f')}, |score diff| max {_fmt(s['score_diff_max'], '.3g')} / median "
              f"{_fmt(s['score_diff_median'], '.3g')}, median mask IoU {_fmt(s['mask_iou_median'], '.6f')}.", ""]
    lines += _detection_rows("Extra candidate detections", report["unmatched_candidate_detections"],
                             s["unmatched_candidate_detections"], "no reference detection of their class matches them")
    lines.append("")
    lines += _detection_rows("Missed reference detections", report["missed_reference_detections"],
                             s["missed_reference_detections"], "no candidate detection of their class matches them")
    machine = report.get("machine")
    if machine:
        lines += ["", f"Machine: {machine['cpu']} ({machine['cpus']} CPUs; {' '.join(machine['isa'])})."]
    lines += ["", "| raw output | max abs | mean abs | median abs | max rel | mean rel |", "|---|---|---|---|---|---|"]
    for name, st in report["raw_outputs"].items():
        lines.append(f"| {name} | {st['abs']['max']:.3g} | {st['abs']['mean']:.3g} | {st['abs']['median']:.3g} | "
                     f"{st['rel']['max']:.3g} | {st['rel']['mean']:.3g} |")
    figures = report.get("figures")
    if figures:
        lines += ["", "## Matched detections", "", f"![matched scores and box IoUs]({figures['matches']})", "",
                  "## Largest differences (reference | candidate; missed and extra detections marked)", ""]
        for fig in figures["worst"]:
            row = report["per_image"][fig["row"]]
            lines += [f"**{fig['image']}**: {row['matched']} of {row['reference_above_floor']} reference detections "
                      f"matched, {row['extra']} extra candidate detection(s), min box IoU {_fmt(row['box_iou_min'])}, "
                      f"max |score diff| {_fmt(row['score_diff_max'])}", "", f"![{fig['image']}]({fig['file']})", ""]
    if report["verdict"] == "failed" and "report_folder" in report:
        from maskrt.runtime.parity.layers_report import parity_layers_command

        lines += ["", "## Which layer?", "",
                  "Compare the candidate with a fresh fp32 export of the checkpoint tensor by tensor; layers.md ranks "
                  "the nodes by the error each adds (`maskrt parity --layers` runs it into this folder's layers/):",
                  "", "```", parity_layers_command(report), "```"]
    return "\n".join(lines) + "\n"


def summary_line(report: dict[str, Any]) -> str:
    """One line for the CLI: verdict and why, dAPs, recall, precision, evidence."""
    s = report["summary"]
    coco = s["coco"]
    ap = (", ".join(f"dAP {t} {coco['delta'][t]:+.3f} [{_fmt(coco['interval'][t]['low'], '+.3f')}, "
                    f"{_fmt(coco['interval'][t]['high'], '+.3f')}]" for t in ("bbox", "segm"))
          if coco is not None else "no annotations")
    return (f"parity {report['backend']}/{report['graph']} vs {report['reference']}: {report['verdict'].upper()} "
            f"({report['reason']}); {ap}, recall {_fmt(s['recall'], '.4f')}, precision {_fmt(s['precision'], '.4f')}, "
            f"{s['reference_detections_above_floor']} reference detections, images {s['images']}")
