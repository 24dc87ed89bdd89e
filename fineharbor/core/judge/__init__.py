"""FineVision's 4-axis LLM/VLM-as-judge ratings, per turn, 1-5 (no Dagster here).

Typical use (the scoring asset does this per record batch)::

    params = JudgeParams(backend="openai", base_url="http://gpu-box:8000/v1")
    text_backend, vision_backend = make_backends(params)
    with JudgmentCache(home / "judge_cache") as cache:
        ratings, stats = rate_samples(batch, text_backend, vision_backend, params, cache)
"""

from fineharbor.core.judge.backend import (
    CallableBackend,
    JudgeBackend,
    JudgeModelNotFoundError,
    JudgeRequest,
)
from fineharbor.core.judge.cache import Judgment, JudgmentCache, JudgmentKey
from fineharbor.core.judge.openai_backend import OpenAIChatBackend
from fineharbor.core.judge.params import JudgeParams
from fineharbor.core.judge.parse import ParseResult, parse_rating, parse_rating_detail
from fineharbor.core.judge.prompts import (
    AXES,
    PROMPT_VERSIONS,
    TEXT_AXES,
    VISION_AXES,
    Axis,
    Prompt,
    build_prompt,
)
from fineharbor.core.judge.rate import (
    RATINGS_SCHEMA,
    JudgeStats,
    make_backends,
    min_column,
    rate_samples,
    ratings_column,
)
from fineharbor.core.judge.transformers_backend import TransformersBackend

__all__ = [
    "AXES",
    "PROMPT_VERSIONS",
    "RATINGS_SCHEMA",
    "TEXT_AXES",
    "VISION_AXES",
    "Axis",
    "CallableBackend",
    "JudgeBackend",
    "JudgeModelNotFoundError",
    "JudgeParams",
    "JudgeRequest",
    "JudgeStats",
    "Judgment",
    "JudgmentCache",
    "JudgmentKey",
    "OpenAIChatBackend",
    "ParseResult",
    "Prompt",
    "TransformersBackend",
    "build_prompt",
    "make_backends",
    "min_column",
    "parse_rating",
    "parse_rating_detail",
    "rate_samples",
    "ratings_column",
]
