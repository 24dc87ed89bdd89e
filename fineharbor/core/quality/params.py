"""Parameters of the quality scores: CLIP score (LAION, DanQing) and the learned classifier
(UniFilter). Defaults come from ``/work/shared/reference/papers.md``; where a paper gives no
number the description says how the default was chosen.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fineharbor.core.quality.text import ImageRule, TextRule
from fineharbor.core.strict import StrictModel, moved_to_release

# UniFilter's quality levels: 0 (another image's text) to 3 (the image's own text)
LEVELS = (0, 1, 2, 3)
MAX_LEVEL = 3

Device = Literal["auto", "cpu", "cuda"]


class ClipScoreParams(StrictModel):
    """Image-text cosine similarity with an open_clip model.

    The stage only measures; the release recipe's ``clip_score_min`` / ``clip_score_max`` filter
    on the score. Those bounds belong to a model: LAION's 0.30 / 0.28 are for OpenAI CLIP
    ViT-B/32 and mean nothing for another (the demo CLIP has its own scale).
    """

    model: str | None = Field(
        "ViT-B-32",
        description="open_clip model name (LAION used OpenAI ViT-B/32), 'local-dir:/path' for a "
        "saved model directory (open_clip_config.json + weights, e.g. the demo CLIP), or "
        "'hf-hub:org/repo'; null turns CLIP scoring and the learned classifier off (their "
        "columns are null)",
    )
    pretrained: str | None = Field(
        "openai",
        description="open_clip pretrained tag or checkpoint file; ignored with local-dir:/hf-hub:",
    )
    model_config_path: str | None = Field(
        None,
        description="JSON architecture config to register with open_clip before loading (custom "
        "architectures given as name + checkpoint file)",
    )
    text_rule: TextRule = Field(
        "all_turns",
        description="text scored per sample: all_turns (every turn 'user assistant' joined, "
        "truncated by the tokenizer to the model's context), first_turn, first_answer (the "
        "caption of a caption pair), or turn_mean (mean of per-turn scores)",
    )
    image_rule: ImageRule = Field(
        "max",
        description="several images: max (the text is justified by its best-matching image; "
        "interleaved documents talk about one image at a time) or mean",
    )
    batch_size: int = Field(64, ge=1, le=8192, description="images or texts per forward pass")
    device: Device = Field("auto", description="auto = cuda when available, else cpu")
    half_precision: bool = Field(True, description="fp16 autocast on CUDA (never on CPU)")
    num_workers: int = Field(
        2,
        ge=0,
        le=256,
        description="DataLoader worker processes of scored_samples that decode and preprocess "
        "images for every model of the stage (this CLIP, the signal models, the classifier, "
        "the face detector) while the models run; 0 = decode in the calling process",
    )
    prefetch_factor: int = Field(
        4, ge=1, le=64, description="row batches each worker keeps ready ahead of the models"
    )

    _moved = model_validator(mode="before")(
        moved_to_release(
            "stages.clip_score",
            {"lower": "release.clip_score_min", "upper": "release.clip_score_max"},
        )
    )


PUBLISHED_VISION_TOWER = "google/siglip-so400m-patch14-384"
PUBLISHED_LANGUAGE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


class MllmClassifierParams(StrictModel):
    """UniFilter's published architecture (``architecture: mllm``): a SigLIP/CLIP vision tower,
    an AvgPool projector and a small causal LM with a regression head on its last hidden state.

    The published configuration is SigLIP-SO400M + Qwen2.5-0.5B, a GPU model (about 1 B
    parameters). Both fields take a local directory written by ``save_pretrained`` or a Hub name
    already in the local cache; nothing is downloaded at run time.
    """

    vision_model: str = Field(
        PUBLISHED_VISION_TOWER,
        description="SigLIP or CLIP checkpoint (full model or vision tower only); the vision "
        "tower is frozen and its patch tokens average-pooled",
    )
    language_model: str = Field(
        PUBLISHED_LANGUAGE_MODEL,
        description="any transformers causal LM (AutoModelForCausalLM) with its tokenizer; "
        "fine-tuned with the projector and the regression head",
    )
    visual_tokens: int = Field(
        144,
        ge=1,
        le=4096,
        description="tokens per image after average pooling (a square number: the patch grid "
        "is pooled to sqrt x sqrt); default 144 = 12 x 12 (SO400M at 384 px has 27 x 27 patches)",
    )
    max_length: int = Field(
        1024, ge=8, le=32768, description="LM input positions per document (visual + text)"
    )
    epochs: int = Field(3, ge=1, le=1000, description="passes over the training examples")
    batch_size: int = Field(8, ge=1, le=4096, description="documents per optimiser step")
    learning_rate: float = Field(1e-5, gt=0, description="AdamW, LM + projector + head")
    device: Device = Field("auto", description="auto = cuda when available, else cpu")
    bf16: bool = Field(True, description="bfloat16 autocast on CUDA (never on CPU)")

    @model_validator(mode="after")
    def _square_tokens(self) -> MllmClassifierParams:
        side = round(self.visual_tokens**0.5)
        if side * side != self.visual_tokens:
            raise ValueError(
                f"visual_tokens ({self.visual_tokens}) must be a square number (e.g. 64, 144): "
                "the patch grid is average-pooled to a square grid"
            )
        return self


class QualityClassifierParams(StrictModel):
    """The UniFilter-style scorer, trained on real images with texts at levels 0-3.

    ``architecture: clip_mlp`` (default) fits an MLP on frozen CLIP features (fast, CPU);
    ``architecture: mllm`` trains UniFilter's published model (:class:`MllmClassifierParams`).
    Both regress the level with MSE (``num_labels = 1`` in UniFilter's released script); the
    fields ``hidden`` to ``chunk_words`` belong to clip_mlp.
    """

    objective: Literal["mse", "classification"] = Field(
        "mse",
        description="mse: regression on the level 0-3 (UniFilter's released script); "
        "classification: 4-way cross-entropy, score = expected level",
    )
    hidden: int = Field(256, ge=8, le=8192, description="hidden units of the two-layer MLP")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(60, ge=1, le=10000, description="passes over the training examples")
    batch_size: int = Field(256, ge=8, le=65536)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    holdout_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="share of source images (with all their texts) held out to report accuracy",
    )
    chunk_words: int = Field(
        50,
        ge=4,
        le=4096,
        description="words per text chunk; longer texts are split and their chunk embeddings "
        "averaged (~0.7 x the text encoder's context: 50 words for CLIP's 77 tokens)",
    )
    seed: int = 0
    max_training_samples: int = Field(
        20000,
        ge=2,
        description="real samples the semi-synthetic set is built from (spread evenly over the "
        "train sources; their image bytes are held in memory while features are computed)",
    )
    rewrite_with_judge: bool = Field(
        False,
        description="have the judge's text model (stages.judge) rewrite the synthetic level 1 "
        "and 2 texts in its own words, as UniFilter had Claude write its training texts; off: "
        "the rule-based texts only (offline, reproducible)",
    )
    architecture: Literal["clip_mlp", "mllm"] = Field(
        "clip_mlp",
        description="clip_mlp: the two-layer MLP on frozen CLIP features (fast, the default); "
        "mllm: UniFilter's published vision tower + AvgPool projector + small LM (`mllm`)",
    )
    mllm: MllmClassifierParams = MllmClassifierParams()
    synthetic_texts: Literal["rules", "mllm"] = Field(
        "rules",
        description="who writes the four-level training texts: rules (offline, reproducible; "
        "the demo) or mllm (the judge's vision model, stages.judge.vision_model, writes all "
        "four levels per real image, as UniFilter had Claude write them; cached)",
    )
    synthetic_max_tokens: int = Field(
        256, ge=8, le=8192, description="reply budget per MLLM-written text"
    )
    _moved = model_validator(mode="before")(
        moved_to_release("stages.quality_classifier", {"min_score": "release.quality_min"})
    )

    @model_validator(mode="after")
    def _one_writer(self) -> QualityClassifierParams:
        if self.synthetic_texts == "mllm" and self.rewrite_with_judge:
            raise ValueError(
                "synthetic_texts: mllm already has the MLLM write every level; turn "
                "rewrite_with_judge off (it rewrites the rule-based texts)"
            )
        return self


class SignalParams(StrictModel):
    """LAION-5B's safety and quality tags and DataComp's face counts, one column each on
    ``scored_samples`` (docs/signals.md). Every model is a local file; null leaves its column
    null. Thresholds on these columns belong to the release recipe, not here."""

    nsfw_path: str | None = Field(
        None,
        description="LAION's CLIP-based NSFW detector for ViT-L/14 as a PyTorch state_dict or "
        ".safetensors file of layers.N Linear weights -> punsafe (0-1, 1 = unsafe)",
    )
    aesthetic_path: str | None = Field(
        None,
        description="LAION aesthetic predictor v2, sac+logos+ava1-l14-linearMSE.pth (or a "
        ".safetensors file of the same layers) -> aesthetic_score (about 1-10)",
    )
    watermark_path: str | None = Field(
        None,
        description="LAION-5B's watermark_model_v1.pt (state_dict of watermark_arch with LAION's "
        "head) or a TorchScript module taking watermark_image_size pixels -> pwatermark (0-1)",
    )
    watermark_arch: str = Field(
        "efficientnet_b3a", description="timm architecture of a watermark state_dict"
    )
    watermark_image_size: int = Field(
        256, ge=16, le=1024, description="square input side of the watermark model (LAION: 256)"
    )
    watermark_class: int = Field(
        0, ge=0, le=1, description="logit index of 'watermarked' (LAION's model: 0)"
    )
    clip_model: str | None = Field(
        "ViT-L-14",
        description="open_clip model whose image embeddings the NSFW and aesthetic heads read "
        "(LAION's heads: OpenAI ViT-L/14). When it equals stages.clip_score's model, pretrained "
        "and config, the scoring CLIP's embeddings are reused",
    )
    clip_pretrained: str | None = Field("openai", description="open_clip pretrained tag or file")
    clip_model_config: str | None = Field(None, description="JSON config for a custom model")
    faces: bool = Field(
        False,
        description="count faces per image with OpenCV's frontal-face Haar cascade (shipped in "
        "opencv-python-headless) -> face_count and face_boxes; release.blur_faces needs it",
    )
    face_min_size: int = Field(
        24, ge=8, le=4096, description="smallest face side in pixels the detector reports"
    )
    face_min_neighbors: int = Field(
        5,
        ge=1,
        le=50,
        description="Haar detections merged into one face (higher: fewer false faces)",
    )
    batch_size: int = Field(32, ge=1, le=4096, description="images per forward pass")
    device: Device = Field("auto", description="auto = cuda when available, else cpu")

    def shares_clip(self, scoring: ClipScoreParams) -> bool:
        """Whether the heads read the scoring CLIP itself (its embeddings are then reused)."""
        return bool(scoring.model) and (
            self.clip_model,
            self.clip_pretrained,
            self.clip_model_config,
        ) == (scoring.model, scoring.pretrained, scoring.model_config_path)
