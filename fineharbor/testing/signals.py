"""Tiny signal models with random weights, saved in the published files' layouts (the LAION
heads' ``layers.N`` state_dicts, LAION's watermark state_dict, a TorchScript watermark module),
so tests load them through the loaders users take."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn


class _Layers(nn.Module):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def tiny_aesthetic(dim: int) -> nn.Module:
    """The aesthetic predictor v2's layout (Linear and Dropout, no activation), narrow."""
    return _Layers(
        nn.Linear(dim, 32),
        nn.Dropout(0.2),
        nn.Linear(32, 16),
        nn.Dropout(0.2),
        nn.Linear(16, 8),
        nn.Dropout(0.1),
        nn.Linear(8, 4),
        nn.Linear(4, 1),
    ).eval()


def tiny_nsfw(dim: int) -> nn.Module:
    """LAION's PyTorch NSFW head layout (Linear-ReLU-Dropout blocks, two final Linear layers,
    sigmoid), narrow."""
    return _Layers(
        nn.Linear(dim, 32),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(16, 8),
        nn.Linear(8, 1),
        nn.Sigmoid(),
    ).eval()


def save_head(module: nn.Module, path: Path) -> Path:
    """``torch.save(state_dict)``, or safetensors when ``path`` ends in ``.safetensors``."""
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


class TinyWatermarkCnn(nn.Module):
    """Two logits from pixels, small enough to script and train in seconds."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(width * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


def save_tiny_watermark_torchscript(path: Path) -> nn.Module:
    torch.manual_seed(0)
    model = TinyWatermarkCnn().eval()
    export_torchscript(model, path)
    return model


def export_torchscript(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.script(model.eval()).save(str(path))


def save_tiny_laion_watermark(path: Path, arch: str = "test_efficientnet") -> nn.Module:
    """LAION's watermark network (its replaced classifier) on a tiny timm backbone."""
    from fineharbor.core.quality.signals import laion_watermark_model

    torch.manual_seed(0)
    model = laion_watermark_model(arch).eval()
    torch.save(model.state_dict(), path)
    return model


def draw_face(size: int = 220, face_width: int = 100) -> Image.Image:
    """A drawn frontal face (skin oval, brows, eyes, nose, mouth, softened edges) that OpenCV's
    frontal-face Haar cascade finds, deterministically, at face widths of about 80 px and up."""
    image = Image.new("RGB", (size, size), (90, 110, 130))
    draw = ImageDraw.Draw(image)
    cx = cy = size // 2
    w, h = face_width, int(face_width * 1.3)
    draw.ellipse([cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2], fill=(225, 190, 160))
    for side in (-1, 1):
        ex, ey = cx + side * w * 0.2, cy - h * 0.12
        draw.rectangle(
            [ex - w * 0.12, ey - h * 0.1, ex + w * 0.12, ey - h * 0.07], fill=(60, 40, 30)
        )
        draw.ellipse(
            [ex - w * 0.09, ey - h * 0.04, ex + w * 0.09, ey + h * 0.04], fill=(40, 30, 30)
        )
    nose = [(cx, cy - h * 0.05), (cx - w * 0.07, cy + h * 0.12), (cx + w * 0.07, cy + h * 0.12)]
    draw.polygon(nose, fill=(190, 150, 120))
    draw.rectangle([cx - w * 0.18, cy + h * 0.22, cx + w * 0.18, cy + h * 0.26], fill=(120, 50, 50))
    return image.filter(ImageFilter.GaussianBlur(2))
