"""Checkpoint files: atomic, safe to load, validated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskrt.core.errors import MaskrtError
from maskrt.training.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from maskrt.training.models import build_model, default_model_config

CLASSES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _slim_checkpoint() -> dict:
    cfg = default_model_config("slim", 2)
    return make_checkpoint(model_config=cfg, state_dict=build_model(cfg).state_dict(), classes=CLASSES)


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    ckpt = _slim_checkpoint()
    save_checkpoint(tmp_path / "c.pt", ckpt)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # the safe loader accepts it as is
    assert raw["format_version"] == FORMAT_VERSION and raw["classes"] == CLASSES
    assert set(raw["versions"]) >= {"maskrt", "torch", "torchvision"}
    model = model_from_checkpoint(load_checkpoint(tmp_path / "c.pt", expect_config="slim"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k])


def test_no_temp_files_left(tmp_path: Path) -> None:
    atomic_save({"x": torch.zeros(3)}, tmp_path / "f.pt")
    atomic_save({"x": torch.ones(3)}, tmp_path / "f.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]
    assert torch.load(tmp_path / "f.pt", weights_only=True)["x"].sum() == 3


def test_rejections(tmp_path: Path) -> None:
    ckpt = _slim_checkpoint()
    with pytest.raises(MaskrtError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint(tmp_path / "old.pt", {**ckpt, "format_version": 99})
    with pytest.raises(MaskrtError, match="old.pt: checkpoint format_version 99 is not supported"):
        load_checkpoint(tmp_path / "old.pt")
    save_checkpoint(tmp_path / "slim.pt", ckpt)
    with pytest.raises(MaskrtError, match="is of config 'slim', not 'r50-fpn'"):
        load_checkpoint(tmp_path / "slim.pt", expect_config="r50-fpn")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "slim.pt").read_bytes()[:1000])
    with pytest.raises(MaskrtError, match="trunc.pt: not a readable maskrt checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(MaskrtError, match="no format_version"):
        load_checkpoint(tmp_path / "sd.pt")
    wrong = {**ckpt, "model_config": default_model_config("slim", 5)}
    with pytest.raises(MaskrtError, match="weights do not fit config 'slim'"):
        model_from_checkpoint(wrong)
