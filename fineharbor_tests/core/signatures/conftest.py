"""Tiny models with random weights, saved to temporary files and loaded through the same code
paths users take (no weights are ever downloaded)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

TINY_CLIP_NAME = "fh-tiny-clip-test"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class TinyCopyNet(nn.Module):
    """A stand-in for an SSCD network: conv, pooling, linear, L2-normalised (dim 24)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.head = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return nn.functional.normalize(self.head(pooled), dim=1)


class SizedCopyNet(TinyCopyNet):
    """Like the demo copy detector: carries its input side as a TorchScript attribute."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size


def save_script(module: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        torch.jit.script(module.eval()).save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tuple[str, Path, Path]:
    """(model name, config JSON, checkpoint) of a tiny open_clip model with random weights."""
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    config = root / f"{TINY_CLIP_NAME}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(TINY_CLIP_NAME)
    checkpoint = root / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return TINY_CLIP_NAME, config, checkpoint
