"""Tiny models with random weights, saved where and how users' models are, so tests and
benchmarks load them through the real loading code (nothing is ever downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

from fineharbor.demo.clip import DemoClipConfig, TrainingReport, save_demo_clip

TINY = DemoClipConfig(
    image_size=32,
    vision="vit",
    vision_width=32,
    vision_layers=1,
    patch_size=8,
    text_width=32,
    text_layers=1,
    context_length=32,
    embed_dim=16,
)


def save_tiny_clip(out: Path) -> Path:
    import open_clip

    from fineharbor.demo.clip import open_clip_model_cfg

    torch.manual_seed(0)
    model = open_clip.CLIP(**open_clip_model_cfg(TINY)).eval()
    report = TrainingReport(0, 0, 0, 0, 0, 0, 0, False, float("nan"), 0.0, 0.0, 1)
    save_demo_clip(model, TINY, out, report)
    return out
