"""Parameters of the judge (FineVision's 4-axis ratings).

Paper defaults (``/work/shared/reference/papers.md``, FineVision): Qwen3-32B rates the text axes
(formatting, relevance, visual dependency) and Qwen2.5-VL-32B-Instruct rates image
correspondence, both served by vLLM, 1-5 per turn. FineVision's prompts, sampling settings and
input limits were not published; where a default below is ours, its description says why.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fineharbor.core.judge.prompts import AXES, Axis
from fineharbor.core.strict import StrictModel

BackendKind = Literal["transformers", "openai", "none"]


class JudgeParams(StrictModel):
    """Judge settings (the ``judge`` block of the scoring stage)."""

    backend: BackendKind = Field(
        "none",
        description="'openai': an OpenAI-compatible server (vLLM/SGLang/TGI, as FineVision did); "
        "'transformers': in process; 'none': no judging (rating columns are null). Off by "
        "default because judging is the most expensive step of the pipeline",
    )
    text_model: str = Field(
        "Qwen/Qwen3-32B",
        description="text judge (formatting, relevance, visual_dependency): a Hub name or local "
        "directory for 'transformers', the served model name for 'openai'",
    )
    vision_model: str | None = Field(
        "Qwen/Qwen2.5-VL-32B-Instruct",
        description="vision judge (image_correspondence); null leaves that axis null",
    )
    base_url: str = Field(
        "http://localhost:8000/v1", description="endpoint of the text judge ('openai')"
    )
    vision_base_url: str | None = Field(
        None,
        description="endpoint of the vision judge ('openai'); null: the same as base_url (one "
        "server serving both models, or a single VLM used for all axes)",
    )
    api_key_env: str | None = Field(
        None,
        description="environment variable holding the bearer token; null sends none (local vLLM)",
    )
    concurrency: int = Field(
        32, ge=1, le=1024, description="requests in flight per endpoint ('openai')"
    )
    timeout_s: float = Field(
        120.0, gt=0, description="per-request deadline ('openai'); a cold 32B server is slow"
    )
    retries: int = Field(
        3, ge=0, le=10, description="retries on timeout, connection error, 408/429/5xx"
    )
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles, with jitter")
    max_new_tokens: int = Field(
        32,
        ge=1,
        le=4096,
        description="reply budget: 'Rating: N' needs ~4 tokens; the margin admits a short "
        "preamble. Reasoning models need thinking off (chat_template_kwargs) or a large budget",
    )
    batch_size: int = Field(8, ge=1, le=1024, description="prompts per generate() ('transformers')")
    device: str = Field("auto", description="'auto' (cuda when present), 'cuda', 'cuda:1', 'cpu'")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="'auto': bfloat16 (float16 without bf16 support) on GPU, float32 on CPU"
    )
    axes: list[Axis] = Field(
        default_factory=lambda: list(AXES),
        description="axes to rate; the columns of the others are null",
    )
    max_chars_per_turn: int = Field(
        6000,
        ge=100,
        description="cap on the question and on the answer text sent per turn (each, head kept): "
        "about 1.5k tokens each, so a prompt fits judges with 4k+ contexts; FineVision's own "
        "per-turn cap was 8192 tokens at cleaning",
    )
    max_images: int = Field(
        4,
        ge=1,
        le=64,
        description="images sent per image_correspondence request (the first N): each 2048 px "
        "image costs Qwen2.5-VL ~5k tokens; a vLLM server needs --limit-mm-per-prompt >= this",
    )
    chat_template_kwargs: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="passed to the chat template, e.g. {enable_thinking: false} for Qwen3 (for "
        "'openai' sent as the vLLM/SGLang chat_template_kwargs extension)",
    )
    flush_every: int = Field(
        256,
        ge=1,
        description="requests per chunk between cache writes: a killed run loses at most this",
    )

    @field_validator("axes")
    @classmethod
    def _unique_axes(cls, axes: list[Axis]) -> list[Axis]:
        if len(set(axes)) != len(axes):
            raise ValueError("an axis is listed twice")
        return axes

    @model_validator(mode="after")
    def _endpoint_given(self) -> JudgeParams:
        if self.backend == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must be an http(s) URL")
        return self
