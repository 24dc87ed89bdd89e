"""Tiny judge models built offline from configs, a loopback OpenAI-compatible server, samples.

Models: a 2-layer Llama causal LM and a tiny LLaVA (CLIP vision tower + 2-layer Llama), random
weights, a hand-made WordLevel tokenizer with a chat template, saved with ``save_pretrained`` and
loaded by path through :class:`TransformersBackend`, as a user's local model would be. An
"always 4" variant zeroes the final norm: every logit is then exactly 0, greedy argmax picks token
id 0, and id 0 is the word "4"; with one new token the real generate path answers "4".
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from fineharbor.core.schema import UNIFIED_SCHEMA
from fineharbor.testing.unifilter import tiny_decoder_config
from fineharbor_tests.conftest import make_image_bytes

SPECIALS = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>"]
WORDS = ["4", "1", "2", "3", "5", "Rating", ":", "the", "a", "question", "answer", "image"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(WORDS + SPECIALS)}  # "4" is id 0
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer.add_special_tokens(SPECIALS)  # existing ids, matched before pre-tokenization
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={"image_token": "<image>"},
    )


def _text_config(tokenizer):
    from transformers import LlamaConfig

    return tiny_decoder_config(LlamaConfig, tokenizer, max_positions=4096)


def _always_four(language_model) -> None:
    import torch

    with torch.no_grad():
        language_model.norm.weight.zero_()


def save_text_model(directory: Path, *, always_four: bool = False) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_text_config(tokenizer))
    if always_four:
        _always_four(model.model)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_vision_model(directory: Path, *, always_four: bool = False) -> Path:
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    if always_four:
        _always_four(model.model.language_model)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judge_models")
    return {
        "text": save_text_model(root / "text"),
        "text_four": save_text_model(root / "text_four", always_four=True),
        "vision": save_vision_model(root / "vision"),
        "vision_four": save_vision_model(root / "vision_four", always_four=True),
    }


# --------------------------------------------------------------------------- samples


def make_samples(n_turns: tuple[int, ...] = (2, 1, 1), no_image: tuple[int, ...] = (1,)):
    """Unified rows; rows listed in `no_image` have no images (text-only samples)."""
    rows = []
    for index, turns in enumerate(n_turns):
        images = [] if index in no_image else [{"bytes": make_image_bytes(index), "path": None}]
        texts = [
            {"user": f"Q{index}.{t}: what colour is the ball?", "assistant": f"red {index}.{t}"}
            for t in range(turns)
        ]
        rows.append(
            {
                "sample_id": f"s{index}",
                "source": "demo",
                "origin_uri": None,
                "origin_key": str(index),
                "images": images,
                "texts": texts,
            }
        )
    return pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA)


@pytest.fixture
def samples() -> pa.Table:
    return make_samples()
