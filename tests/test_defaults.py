"""Each user-facing default is defined once (maskrt.core.defaults): the CLI, the library and the pins read it."""

from __future__ import annotations

import argparse
import inspect
import re
import tomllib
from pathlib import Path

import pytest

from maskrt.cli import build_parser
from maskrt.core import defaults as d

ROOT = Path(__file__).resolve().parents[1]


def _defaults(command: str) -> dict[str, object]:
    parser = build_parser()
    for name in command.split():  # "bench server": a command's own subcommand
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return {a.dest: a.default for a in parser._actions}


@pytest.mark.parametrize(("command", "expected"), [
    ("predict", {"score_threshold": d.DEFAULT_SCORE_THRESHOLD}),
    ("serve", {"score_threshold": d.DEFAULT_SCORE_THRESHOLD, "name": d.DEFAULT_MODEL_NAME,
               "max_batch": d.DEFAULT_SERVER_MAX_BATCH, "queue_delay_us": d.DEFAULT_QUEUE_DELAY_US,
               "max_megapixels": d.DEFAULT_REQUEST_MAX_PIXELS / 1e6}),
    ("triton", {"score_threshold": d.DEFAULT_SCORE_THRESHOLD, "name": d.DEFAULT_MODEL_NAME,
                "max_batch": d.DEFAULT_SERVER_MAX_BATCH, "queue_delay_us": d.DEFAULT_QUEUE_DELAY_US}),
    ("bench server", {"server_model": d.DEFAULT_MODEL_NAME}),
])
def test_cli_defaults_are_the_core_ones(command: str, expected: dict[str, object]) -> None:
    got = _defaults(command)
    assert {k: got[k] for k in expected} == expected


def test_library_defaults_are_the_core_ones() -> None:
    from maskrt.runtime.predictor import Predictor
    from maskrt.serving.repository import RepositoryOptions
    from maskrt.serving.server import ServeOptions
    from maskrt.serving.steps import PostStep

    for factory in (Predictor.from_export, Predictor.from_engine, Predictor.from_checkpoint):
        assert inspect.signature(factory).parameters["score_threshold"].default == d.KEEP_ALL_SCORES
    assert inspect.signature(PostStep).parameters["score_threshold"].default == d.DEFAULT_SCORE_THRESHOLD
    repo, serve = RepositoryOptions(), ServeOptions()
    assert (repo.score_threshold, repo.name, repo.max_batch, repo.max_pixels) == (
        d.DEFAULT_SCORE_THRESHOLD, d.DEFAULT_MODEL_NAME, d.DEFAULT_SERVER_MAX_BATCH, d.DEFAULT_REQUEST_MAX_PIXELS)
    assert (serve.model_name, serve.max_batch, serve.max_pixels) == (
        d.DEFAULT_MODEL_NAME, d.DEFAULT_SERVER_MAX_BATCH, d.DEFAULT_REQUEST_MAX_PIXELS)


def test_pins_are_spelled_once() -> None:
    """pyproject.toml's test extra pins the TensorRT-RTX of core.defaults; no module spells the pin again."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert d.RTX_REQUIREMENT in extras["test"]
    pin = re.compile("tensorrt-rtx-cu13" + "==")  # split: this file does not spell it either
    spelled = [str(p.relative_to(ROOT)) for folder in ("src", "training", "export", "runtime", "serving", "plugins",
                                                      "tests", "scripts")
               for p in (ROOT / folder).rglob("*.py") if pin.search(p.read_text())]
    assert spelled == ["src/maskrt/core/defaults.py"]
