"""Models that are named but absent: reported once when the project file loads (field, where,
how to get it), the stages that need them run without them, and nothing is downloaded."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fineharbor.core import models
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.stage import CLEANED_SCHEMA
from fineharbor.core.cleaning.text import token_count
from fineharbor.core.config import load_config
from fineharbor.core.pipeline import DECONTAMINATED, SCORED
from fineharbor.core.schema import make_sample_id
from fineharbor.core.signatures.params import SignatureParams
from fineharbor.core.storage import Storage
from fineharbor.testing.stored import write_kept_rows
from fineharbor_tests.core.cleaning.helpers import encode, scene

PROJECT = """
sources:
  - name: photos
    reader: image_folder
    location: photos
    mapping: {caption: txt}
stages:
  signatures:
    sscd_path: {root}/models/sscd_disc_mixup.torchscript.pt
"""


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty Hugging Face cache and home directory, and no network at all: any attempt to
    connect fails the test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    models._REPORTED.clear()

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path


def project_file(tmp_path: Path, text: str = PROJECT) -> Path:
    path = tmp_path / "fineharbor.yaml"
    path.write_text(text.replace("{root}", str(tmp_path)))
    return path


def test_absent_models_are_reported_once_at_load(offline, caplog):
    path = project_file(offline)
    with caplog.at_level(logging.WARNING, logger="fineharbor.models"):
        config = load_config(path)
        load_config(path)  # loaded again in the same process: not reported again
    messages = [r.getMessage() for r in caplog.records if r.name == "fineharbor.models"]
    assert len(messages) == 1
    (message,) = messages
    assert message.startswith("stages.signatures.sscd_path: not found (")
    assert str(offline / "models" / "sscd_disc_mixup.torchscript.pt") in message
    assert "sscd_disc_mixup.torchscript.pt" in message and "train_copy_detector" in message
    assert "copy_embedding null" in message
    # The default CLIP is named by a pretrained tag: the deep check (materialize) finds it absent.
    (deep,) = [m for m in models.missing_models(config, deep=True) if "clip_score" in m]
    assert deep.startswith("stages.clip_score.pretrained: the 'openai' weights of open_clip")
    assert "hf download" in deep and "clip_score and quality_score null" in deep


def test_default_config_without_model_files_scores_with_a_note(offline):
    """The shipped defaults (LAION's ViT-B/32 'openai' CLIP) with no weights on the machine:
    scoring completes, clip_score is null, and the note says which field and how to fix it."""
    from fineharbor.core.quality.clip_score import scoring_clip
    from fineharbor.core.quality.stage import build_scored_samples

    config = load_config(
        project_file(
            offline,
            "sources: [{name: photos, reader: image_folder, "
            "location: photos, mapping: {caption: txt}}]\n",
        )
    )
    assert config.stages.clip_score.model == "ViT-B-32"  # the paper's model stays the default
    embedder, note = scoring_clip(config.stages.clip_score)
    assert embedder is None
    assert note.startswith("stages.clip_score.pretrained:") and "not on this machine" in note
    assert "ViT-B-32" in note and "nothing is downloaded" in note

    storage = Storage(str(offline / "home"))
    rows = [
        {
            "sample_id": make_sample_id("photos", str(i)),
            "source": "photos",
            "images": [{"bytes": encode(scene(64, 48, i), "PNG"), "path": f"{i}.png"}],
            "texts": [{"user": "", "assistant": "A red ball on green grass near a fence."}],
            "origin_uri": f"file:///photos/{i}.png",
            "origin_key": str(i),
            "image_info": [],
            "dropped_turns": 0,
        }
        for i in range(3)
    ]
    table = pa.Table.from_pylist(rows, schema=CLEANED_SCHEMA)
    write_kept_rows(storage, DECONTAMINATED, "photos", table)
    report, stats = build_scored_samples(config, "photos", storage, embedder=embedder)
    assert report.conserved and report.kept == 3
    scored = storage.read_table(SCORED, "photos")
    assert scored.num_rows == 3
    assert pc.all(pc.is_null(scored.column("clip_score"))).as_py()
    assert stats.clip_scores == []


def test_signatures_run_with_hashes_only_when_the_copy_detector_is_absent(offline, caplog):
    from fineharbor.core.signatures.embedders import build_embedders

    params = SignatureParams(
        sscd_path=str(offline / "nowhere.torchscript.pt"), clip_model=f"local-dir:{offline}/no"
    )
    with caplog.at_level(logging.WARNING, logger="fineharbor.models"):
        assert build_embedders(params) == []
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("stages.signatures.sscd_path: not found") for m in messages)
    assert any(
        m.startswith("stages.signatures.clip_model: not found") and "open_clip_config.json" in m
        for m in messages
    )


def _fake_hub_file(cache: Path, repo: str, filename: str) -> Path:
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    (snapshot / filename).write_bytes(b"weights")
    return snapshot / filename


def test_pretrained_tags_resolve_from_the_local_caches_only(offline):
    from fineharbor.core.models import SCORING_CLIP
    from fineharbor.core.signatures.embedders import ModelNotFoundError, resolve_open_clip

    with pytest.raises(ModelNotFoundError, match=r"stages\.clip_score\.pretrained: the 'openai'"):
        resolve_open_clip("ViT-B-32", "openai", fields=SCORING_CLIP)
    # In open_clip's URL cache only: loaded as that file.
    url_copy = offline / "user" / ".cache" / "clip" / "ViT-B-32.pt"
    url_copy.parent.mkdir(parents=True)
    url_copy.write_bytes(b"weights")
    assert resolve_open_clip("ViT-B-32", "openai") == str(url_copy)
    # In the Hub cache (what open_clip prefers): loaded through the tag, offline.
    _fake_hub_file(
        offline / "hf_cache", "timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors"
    )
    assert resolve_open_clip("ViT-B-32", "openai") == "openai"
    with pytest.raises(ModelNotFoundError, match=r"stages\.clip_score\.model: not found"):
        resolve_open_clip("hf-hub:org/absent", None, fields=SCORING_CLIP)


def test_hub_offline_is_scoped():
    from huggingface_hub import constants

    before = constants.is_offline_mode()
    with models.hub_offline():
        assert constants.is_offline_mode()
    assert constants.is_offline_mode() == before


def test_missing_tokenizer_falls_back_to_the_estimate(offline):
    params = CleanParams(tokenizer=str(offline / "no_tokenizer.json"))
    assert token_count("A red ball on the grass.", params) == token_count(
        "A red ball on the grass.", CleanParams()
    )


def test_a_cache_miss_wrapped_by_a_loader_is_recognised():
    from huggingface_hub.errors import LocalEntryNotFoundError

    from fineharbor.core.signatures.embedders import _cache_miss

    try:
        try:
            raise LocalEntryNotFoundError("tokenizer.json is not cached")
        except LocalEntryNotFoundError as miss:
            raise RuntimeError("Failed to load tokenizer") from miss
    except RuntimeError as wrapped:
        assert _cache_miss(wrapped)
    assert not _cache_miss(RuntimeError("a broken checkpoint"))


def test_named_transformers_models_are_checked_at_load(offline, caplog):
    """UniFilter's MLLM backbone and the in-process judge name transformers models: each one
    absent is named with its field when the project file loads; a saved directory is not."""
    from transformers import GPT2Config, GPT2Model

    saved = offline / "tiny_lm"
    GPT2Model(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16)).save_pretrained(saved)
    text = PROJECT + (
        "  judge:\n"
        "    backend: transformers\n"
        f"    text_model: {saved}\n"
        "    vision_model: null\n"
        "  quality_classifier:\n"
        "    architecture: mllm\n"
        "    mllm:\n"
        f"      language_model: {saved}\n"
        f"      vision_model: {offline}/no_such_tower\n"
    )
    with caplog.at_level(logging.WARNING, logger="fineharbor.models"):
        load_config(project_file(offline, text))
    messages = [r.getMessage() for r in caplog.records if r.name == "fineharbor.models"]
    (tower,) = [m for m in messages if "mllm" in m]
    assert tower.startswith("stages.quality_classifier.mllm.vision_model: not found (")
    assert str(offline / "no_such_tower") in tower and "quality_classifier fails" in tower
    assert not [m for m in messages if "language_model" in m or "judge" in m]
    # The published defaults are Hub names: absent from an empty cache, named with `hf download`.
    config = load_config(project_file(offline, PROJECT + "  judge: {backend: transformers}\n"))
    judged = [m for m in models.missing_models(config) if m.startswith("stages.judge")]
    assert len(judged) == 2 and "hf download Qwen/Qwen3-32B" in judged[0]
