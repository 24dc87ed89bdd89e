"""The models a project file names: where each is looked for, and which are missing.

Nothing is downloaded at run time. A model is a local file or directory, or a Hugging Face Hub
repository already in the local cache (``HF_HUB_CACHE`` / ``HF_HOME``), and every load runs with
the Hub offline (:func:`hub_offline`). :func:`missing_models` checks the project file's models
when it loads, without importing torch or open_clip (files, directories and the Hub cache are
looked up); an open_clip pretrained *tag* needs open_clip's table, so ``deep=True`` (what
``fineharbor materialize`` runs at its start) and its loader check it. Each problem names the
field, where the model was looked for and how to get it, and is logged once per process; the
stages that need the model run without it (their columns are null, their metadata says why).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fineharbor.core.pipeline import QUALITY_MODEL

if TYPE_CHECKING:
    from fineharbor.core.config import ProjectConfig

log = logging.getLogger("fineharbor.models")

SSCD_RELEASES = "https://github.com/facebookresearch/sscd-copy-detection#pretrained-models"
SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/{name}.torchscript.pt"
SSCD_HOW = (
    f"Download a published model once (FineVision uses sscd_disc_mixup, 512-d: "
    f"{SSCD_URL.format(name='sscd_disc_mixup')}, list: {SSCD_RELEASES}), or train the demo copy "
    "detector with `python -m fineharbor.core.signatures.train_copy_detector`, and point the "
    "field at the file"
)
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class ClipFields:
    """The project-file fields that name one open_clip model, for messages."""

    model: str
    pretrained: str
    config: str


SIGNATURE_CLIP = ClipFields(
    "stages.signatures.clip_model",
    "stages.signatures.clip_pretrained",
    "stages.signatures.clip_model_config",
)
SCORING_CLIP = ClipFields(
    "stages.clip_score.model", "stages.clip_score.pretrained", "stages.clip_score.model_config_path"
)
NSFW_HOW = (
    "LAION's CLIP-based-NSFW-Detector (github.com/LAION-AI/CLIP-based-NSFW-Detector, "
    "clip_autokeras_binary_nsfw for ViT-L/14) converted to a PyTorch state_dict or safetensors "
    "file of layers.N Linear weights (docs/signals.md shows the conversion); download it once "
    "and point the field at the file"
)
AESTHETIC_HOW = (
    "Download sac+logos+ava1-l14-linearMSE.pth once from "
    "github.com/christophschuhmann/improved-aesthetic-predictor and point the field at it"
)
WATERMARK_HOW = (
    "Download watermark_model_v1.pt once from github.com/LAION-AI/LAION-5B-WatermarkDetection "
    "(models/), or let `fineharbor demo` train the demo detector, and point the field at it"
)

SIGNAL_CLIP = ClipFields(
    "stages.signals.clip_model",
    "stages.signals.clip_pretrained",
    "stages.signals.clip_model_config",
)


# What the pipeline does without each model (its stages run; these columns stay null).
WITHOUT_SSCD = (
    "image_signatures leaves copy_embedding null, so dedup and decontamination use hash "
    "signals only"
)
WITHOUT_SIGNATURE_CLIP = "image_signatures leaves clip_embedding null"
WITHOUT_SCORING_CLIP = (
    "scored_samples leaves clip_score and quality_score null and quality_classifier trains nothing"
)
WITHOUT_SIGNAL = "scored_samples leaves {column} null"
WITHOUT_TOKENIZER = "cleaned_samples counts turn tokens with the offline estimate"
# A transformers model has no fallback: the step that loads it fails with this message.
TRANSFORMERS_HOW = (
    "Give a directory written by save_pretrained, or download it once where there is internet "
    "(`hf download {name}`) into the Hugging Face cache (HF_HOME / HF_HUB_CACHE)"
)
FAILS_WITHOUT = "{step} fails when it loads it"


def not_found(field: str, looked_at: str, how: str) -> str:
    """The one-line message of a missing model: the field, where it was looked for, how to
    get it."""
    return f"{field}: not found ({looked_at}). {how}"


def without(message: str, effect: str) -> str:
    """A missing model's message with what the pipeline does without it."""
    return f"{message}; {effect}"


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_cached(repo: str, filename: str) -> Path | None:
    """The file of a Hub repository in the local cache, or None (never a network call)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face Hub calls made inside answer from the local cache only, as with
    ``HF_HUB_OFFLINE=1``: open_clip and transformers loaders can never download."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def looks_like_file(value: str) -> bool:
    """A checkpoint path rather than an open_clip pretrained tag (tags hold no slash)."""
    return os.sep in value or "/" in value or value.lower().endswith(_CHECKPOINT_SUFFIXES)


def open_clip_problem(
    model: str, pretrained: str | None, config: str | None, fields: ClipFields
) -> str | None:
    """Why an open_clip model is surely absent (a :func:`not_found` message), or None when it
    is here or only open_clip's table can tell (a pretrained tag: see the loader)."""
    if config is not None and not Path(config).expanduser().exists():
        how = "Give the JSON model config written with the model (embed_dim, vision_cfg, text_cfg)"
        return not_found(fields.config, str(Path(config).expanduser()), how)
    if model.startswith(LOCAL_DIR):
        directory = Path(model[len(LOCAL_DIR) :]).expanduser()
        if not (directory / OPEN_CLIP_CONFIG).is_file():
            how = (
                f"Give a directory saved for open_clip ({OPEN_CLIP_CONFIG} and "
                f"{' or '.join(OPEN_CLIP_WEIGHTS)})"
            )
            return not_found(fields.model, str(directory / OPEN_CLIP_CONFIG), how)
        return None
    if model.startswith(HF_HUB):
        repo = model[len(HF_HUB) :]
        if hub_cached(repo, OPEN_CLIP_CONFIG) is None or not any(
            hub_cached(repo, name) for name in OPEN_CLIP_WEIGHTS
        ):
            how = (
                f"Nothing is downloaded at run time: fetch it once where there is internet "
                f"(`hf download {repo}`, into the cache HF_HOME / HF_HUB_CACHE name), or copy "
                f"its directory here and use {LOCAL_DIR}PATH"
            )
            return not_found(
                fields.model, f"{repo} in the Hugging Face cache {hub_cache_dir()}", how
            )
        return None
    if pretrained and looks_like_file(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            how = "Give the path of a checkpoint saved with torch.save(model.state_dict())"
            return not_found(fields.pretrained, str(path), how)
    return None


def _open_clip_missing(
    model: str, pretrained: str | None, config: str | None, fields: ClipFields, deep: bool
) -> str | None:
    problem = open_clip_problem(model, pretrained, config, fields)
    if problem is None and deep and pretrained and not looks_like_file(pretrained):
        from fineharbor.core.signatures.embedders import ModelNotFoundError, resolve_open_clip

        try:
            resolve_open_clip(model, pretrained, config, fields)
        except ModelNotFoundError as error:
            problem = str(error)
    return problem


def missing_models(project: ProjectConfig, *, deep: bool = False) -> list[str]:
    """A message for every model the project names that is not on this machine. Cheap by
    default (no torch import); ``deep`` also looks up open_clip pretrained tags in open_clip's
    caches, which imports open_clip (seconds)."""
    stages = project.stages
    missing: list[str] = []
    signatures = stages.signatures
    if signatures.sscd_path and not Path(signatures.sscd_path).expanduser().is_file():
        path = str(Path(signatures.sscd_path).expanduser())
        missing.append(
            without(not_found("stages.signatures.sscd_path", path, SSCD_HOW), WITHOUT_SSCD)
        )
    if signatures.clip_model:
        problem = _open_clip_missing(
            signatures.clip_model,
            signatures.clip_pretrained,
            signatures.clip_model_config,
            SIGNATURE_CLIP,
            deep,
        )
        if problem:
            missing.append(without(problem, WITHOUT_SIGNATURE_CLIP))
    clip = stages.clip_score
    if clip.model:
        problem = _open_clip_missing(
            clip.model, clip.pretrained, clip.model_config_path, SCORING_CLIP, deep
        )
        if problem:
            missing.append(without(problem, WITHOUT_SCORING_CLIP))
    missing += _signal_models_missing(project, deep)
    missing += _transformers_models_missing(project)
    tokenizer = stages.clean.tokenizer
    if tokenizer and not Path(tokenizer).expanduser().exists():
        how = (
            "Give a local tokenizer.json file or a transformers tokenizer directory, or null "
            "for the offline estimate"
        )
        path = str(Path(tokenizer).expanduser())
        missing.append(without(not_found("stages.clean.tokenizer", path, how), WITHOUT_TOKENIZER))
    return missing


def _signal_models_missing(project: ProjectConfig, deep: bool) -> list[str]:
    """The files ``stages.signals`` names that are absent, and the heads' reference CLIP when it
    is not the scoring CLIP and is absent."""
    signals = project.stages.signals
    missing = []
    for name, path, how, column in (
        ("nsfw_path", signals.nsfw_path, NSFW_HOW, "punsafe"),
        ("aesthetic_path", signals.aesthetic_path, AESTHETIC_HOW, "aesthetic_score"),
        ("watermark_path", signals.watermark_path, WATERMARK_HOW, "pwatermark"),
    ):
        if path and not Path(path).expanduser().is_file():
            message = not_found(f"stages.signals.{name}", str(Path(path).expanduser()), how)
            missing.append(without(message, WITHOUT_SIGNAL.format(column=column)))
    heads = signals.nsfw_path or signals.aesthetic_path
    if heads and signals.clip_model and not signals.shares_clip(project.stages.clip_score):
        problem = _open_clip_missing(
            signals.clip_model,
            signals.clip_pretrained,
            signals.clip_model_config,
            SIGNAL_CLIP,
            deep,
        )
        if problem:
            missing.append(
                without(problem, WITHOUT_SIGNAL.format(column="punsafe and aesthetic_score"))
            )
    return missing


def transformers_model_present(name: str) -> bool:
    """A save_pretrained directory, or a Hub name whose config is in the local cache."""
    from huggingface_hub.errors import HFValidationError

    path = Path(name).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file()
    try:
        return hub_cached(name, "config.json") is not None
    except HFValidationError:  # a path that is not there, not a Hub name
        return False


def _transformers_models_missing(project: ProjectConfig) -> list[str]:
    """The judge's in-process models and UniFilter's MLLM backbone, when configured to run."""
    named: list[tuple[str, str, str]] = []
    judge = project.stages.judge
    if judge.backend == "transformers":
        named.append(("stages.judge.text_model", judge.text_model, "the judge"))
        if judge.vision_model:
            named.append(("stages.judge.vision_model", judge.vision_model, "the judge"))
    classifier = project.stages.quality_classifier
    if classifier.architecture == "mllm":
        for field_name in ("vision_model", "language_model"):
            name = getattr(classifier.mllm, field_name)
            field_path = f"stages.quality_classifier.mllm.{field_name}"
            named.append((field_path, name, QUALITY_MODEL))
    return [
        without(
            not_found(field_path, name, TRANSFORMERS_HOW.format(name=name)),
            FAILS_WITHOUT.format(step=step),
        )
        for field_path, name, step in named
        if not transformers_model_present(name)
    ]


_REPORTED: set[str] = set()


def report_once(message: str) -> None:
    """Log a missing-model message once per process (configs load many times per process)."""
    if message not in _REPORTED:
        _REPORTED.add(message)
        log.warning(message)


def report_missing_models(project: ProjectConfig, *, deep: bool = False) -> list[str]:
    """Log each missing model once per process; returns the messages."""
    missing = missing_models(project, deep=deep)
    for message in missing:
        report_once(message)
    return missing
