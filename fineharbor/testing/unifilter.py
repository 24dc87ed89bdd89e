"""A tiny UniFilter classifier's parts with random weights: a SigLIP vision tower and a Qwen2
causal LM with a small byte-level BPE tokenizer, each saved with ``save_pretrained`` where a
user's local model would be, so tests and benchmarks load them through the real loading code
(``from_pretrained(path, local_files_only=True)``). Nothing is downloaded."""

from __future__ import annotations

import re
from pathlib import Path

from fineharbor.core.quality import perturb

SPECIALS = ["<pad>", "<eos>", "<unk>"]
_COMMON = (
    "a an the of on in with and or is are it this that there to at by for from some few one "
    "image picture photo view scene shape shapes square squares circle number background "
    "describe what colour color how many where which object objects document page text"
)


def _corpus() -> list[str]:
    """The words the rule-based levels and the demo use, as written and capitalised."""
    words: set[str] = set(_COMMON.split())
    for group in (perturb.COLORS, perturb.SHAPES, perturb.COUNT_WORDS):
        words.update(group)
    words.update(perturb.POSITION_OPPOSITES)
    words.update(w + "s" for w in perturb.SHAPES)
    for phrase in (
        *perturb.GENERIC_CAPTIONS,
        *perturb.VAGUE_ANSWERS,
        *perturb._GENERIC_OPENERS,
        *perturb._GENERIC_BODIES,
    ):
        words.update(w.lower() for w in re.findall(r"[A-Za-z]+", phrase))
    lines = [" ".join(sorted(words)), " ".join(sorted(w.capitalize() for w in words))]
    return [*lines, "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" - ( )"]


def build_tokenizer():
    """A byte-level BPE trained on :func:`_corpus`: the tokenizer family of Qwen2, which its
    tokenizer class rebuilds from the saved vocabulary and merges (a word-level one would not
    survive ``AutoTokenizer`` on a Qwen2 directory)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_decoder_config(config_class, tokenizer, *, max_positions: int):
    """A 2-layer decoder of width 32 (4 heads, 2 key-value heads) for ``tokenizer``'s vocabulary,
    of any transformers causal-LM config class (Qwen2Config, LlamaConfig, ...)."""
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def save_tiny_mllm(root: Path, *, vision: str = "siglip") -> tuple[Path, Path]:
    """(vision tower directory, language model directory) under ``root``: a 1-layer SigLIP (or
    CLIP) vision tower on 32 px images with 4 x 4 patches and a 2-layer Qwen2 of width 32."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(0)
    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    if vision == "siglip":
        tower = SiglipVisionModel(SiglipVisionConfig(**shape))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    else:
        tower = CLIPVisionModel(CLIPVisionConfig(**shape))
        processor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
    vision_dir = root / f"tiny-{vision}"
    tower.save_pretrained(vision_dir)
    processor.save_pretrained(vision_dir)

    tokenizer = build_tokenizer()
    config = tiny_decoder_config(Qwen2Config, tokenizer, max_positions=1024)
    lm_dir = root / "tiny-qwen2"
    Qwen2ForCausalLM(config).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    return vision_dir, lm_dir
