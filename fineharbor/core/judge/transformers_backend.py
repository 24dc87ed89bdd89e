"""Judge in process with `transformers`: batched greedy generation with the model's chat template.

Text judges load ``AutoModelForCausalLM`` + ``AutoTokenizer``; vision judges load
``AutoModelForImageTextToText`` + ``AutoProcessor``. The model is loaded once, on first use, and
kept. Prompts are padded on the left (decoder-only generation continues from the last position
of every row), sorted by length so that a batch pads little, and encoded with
``sanitize_control_tokens`` so a sample that contains ``<|im_end|>`` or ``<image>`` cannot forge
chat structure. On CUDA the model runs in bfloat16 (float16 where bf16 is unsupported); on CPU in
float32. Large judges (FineVision used 32B models) are better served by vLLM/SGLang through
:class:`~fineharbor.core.judge.openai_backend.OpenAIChatBackend`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from fineharbor.core.judge.backend import JudgeModelNotFoundError, JudgeRequest, decode_image
from fineharbor.core.models import hub_offline

log = logging.getLogger(__name__)

Modality = Literal["auto", "text", "vision"]
DType = Literal["auto", "bfloat16", "float16", "float32"]


def _looks_like_path(model: str) -> bool:
    # "org/name" is a Hub name; these prefixes can only mean a filesystem path.
    return model.startswith(("/", "./", "../", "~"))


def resolve_model_source(model: str) -> str:
    """A local directory (checked here) or a Hub name (checked when loading)."""
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        if not (path / "config.json").is_file():
            raise JudgeModelNotFoundError(
                f"judge model directory {str(path)!r} "
                f"{'has no config.json' if path.exists() else 'does not exist'}: give a directory "
                "written by save_pretrained (config.json, weights, tokenizer/processor files, chat "
                "template) or a Hugging Face Hub name such as 'Qwen/Qwen3-32B'"
            )
        return str(path.resolve())
    return model


def _hub_error(model: str, error: Exception) -> JudgeModelNotFoundError:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return JudgeModelNotFoundError(
        f"stages.judge: judge model {model!r} could not be loaded: it is not a local directory "
        f"and not in the Hugging Face cache ({cache}) ({error}). Nothing is downloaded at run "
        f"time: download it once where there is internet (`hf download {model}`) into that "
        "cache, or copy the model directory here and give its path instead of the name"
    )


class TransformersBackend:
    """In-process judge; construct cheaply, the model loads on the first ``complete``."""

    def __init__(
        self,
        model: str,
        *,
        modality: Modality = "auto",
        device: str = "auto",
        dtype: DType = "auto",
        max_new_tokens: int = 32,
        batch_size: int = 8,
        chat_template_kwargs: dict[str, Any] | None = None,
        sanitize_control_tokens: bool = True,
        trust_remote_code: bool = False,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        self.model_name = model
        self.modality: Modality = modality
        self.device = device
        self.dtype: DType = dtype
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.sanitize_control_tokens = sanitize_control_tokens
        self.trust_remote_code = trust_remote_code
        self._model: Any = None
        self._processor: Any = None  # tokenizer (text) or processor (vision)
        self._tokenizer: Any = None
        self._torch_device: Any = None
        self._torch_dtype: Any = None
        self._generation_config: Any = None
        self._merge_system = False  # set when the chat template rejects a system role

    @property
    def name(self) -> str:
        return self.model_name

    @property
    def loaded(self) -> bool:
        return self._model is not None

    # ------------------------------------------------------------------ loading

    def _pick_device_and_dtype(self) -> tuple[Any, Any]:
        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_device = torch.device(device)
        if self.dtype != "auto":
            return torch_device, getattr(torch, self.dtype)
        if torch_device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            return torch_device, torch.bfloat16 if bf16 else torch.float16
        return torch_device, torch.float32  # half precision on CPU is slow or unsupported

    def _resolve_modality(self, source: str) -> Literal["text", "vision"]:
        if self.modality != "auto":
            return self.modality
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, trust_remote_code=self.trust_remote_code)
        return "vision" if getattr(config, "vision_config", None) is not None else "text"

    def load(self) -> None:
        """Load model and tokenizer/processor once; later calls do nothing."""
        if self._model is not None:
            return
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
            GenerationConfig,
        )
        from transformers.utils import is_accelerate_available

        source = resolve_model_source(self.model_name)
        device, dtype = self._pick_device_and_dtype()
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        model_kwargs: dict[str, Any] = {"dtype": dtype}
        if device.type == "cuda" and is_accelerate_available():
            # Weights go straight to the GPU instead of through host memory (64 GB for a 32B
            # judge); without accelerate they load on the CPU and are moved below.
            model_kwargs["device_map"] = str(device)
        try:
            with hub_offline():  # Hub names load from the local cache only
                modality = self._resolve_modality(source)
                if modality == "vision":
                    processor = AutoProcessor.from_pretrained(source, **kwargs)
                    tokenizer = processor.tokenizer
                    model = AutoModelForImageTextToText.from_pretrained(
                        source, **model_kwargs, **kwargs
                    )
                else:
                    processor = tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
                    model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs, **kwargs)
        except OSError as error:
            if source != self.model_name:  # a local directory with missing files
                raise JudgeModelNotFoundError(
                    f"judge model directory {source!r} is incomplete: {error}"
                ) from error
            raise _hub_error(self.model_name, error) from error

        if getattr(processor, "chat_template", None) is None:
            raise ValueError(
                f"judge model {self.model_name!r} has no chat template: use a chat/instruct model "
                "(or add a chat_template to its tokenizer/processor files)"
            )
        tokenizer.padding_side = "left"  # generation continues from each row's last position
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token is None:
            raise ValueError(f"judge model {self.model_name!r}: tokenizer has neither pad nor eos")

        model.to(device).eval()
        eos = model.generation_config.eos_token_id
        # A fresh config: greedy and nothing else, whatever sampling defaults the model ships.
        self._generation_config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
        )
        self.modality = modality
        self._model, self._processor, self._tokenizer = model, processor, tokenizer
        self._torch_device, self._torch_dtype = device, dtype
        log.info("judge %s loaded (%s) on %s as %s", self.model_name, modality, device, dtype)

    def close(self) -> None:
        """Free the model (and GPU memory); a later ``complete`` loads it again."""
        if self._model is None:
            return
        self._model = self._processor = self._tokenizer = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ prompting

    def _conversation(self, request: JudgeRequest, images: list[Any]) -> list[dict[str, Any]]:
        if self.modality == "vision":
            content: list[dict[str, Any]] = [{"type": "image", "image": im} for im in images]
            user_text = request.user
            if self._merge_system:
                user_text = f"{request.system}\n\n{user_text}"
            content.append({"type": "text", "text": user_text})
            messages = [{"role": "user", "content": content}]
            if not self._merge_system:
                system = [{"type": "text", "text": request.system}]
                messages.insert(0, {"role": "system", "content": system})
            return messages
        if self._merge_system:
            return [{"role": "user", "content": f"{request.system}\n\n{request.user}"}]
        return [
            {"role": "system", "content": request.system},
            {"role": "user", "content": request.user},
        ]

    def _encode(self, requests: Sequence[JudgeRequest], images: list[list[Any]]) -> Any:
        conversations = [
            self._conversation(r, ims) for r, ims in zip(requests, images, strict=True)
        ]
        common = {
            "add_generation_prompt": True,
            "tokenize": True,
            "return_dict": True,
            "return_tensors": "pt",
            "sanitize_control_tokens": self.sanitize_control_tokens,
            **self.chat_template_kwargs,
        }
        if self.modality == "vision":
            batch = self._processor.apply_chat_template(
                conversations, processor_kwargs={"padding": True}, **common
            )
            return batch.to(device=self._torch_device, dtype=self._torch_dtype)
        batch = self._processor.apply_chat_template(conversations, padding=True, **common)
        return batch.to(self._torch_device)

    def _encode_with_fallback(self, requests: Sequence[JudgeRequest], images: list[list[Any]]):
        from jinja2 import TemplateError

        try:
            return self._encode(requests, images)
        except TemplateError:
            if self._merge_system:
                raise
            # Some templates (e.g. Gemma-2, older Mistral) refuse a system role: fold it into
            # the user turn from now on instead of failing every request.
            log.warning("chat template of %s rejects a system role: merged", self.model_name)
            self._merge_system = True
            return self._encode(requests, images)

    # ------------------------------------------------------------------ generation

    def _generate(self, requests: Sequence[JudgeRequest], images: list[list[Any]]) -> list[str]:
        import torch

        batch = self._encode_with_fallback(requests, images)
        with torch.inference_mode():
            output = self._model.generate(**batch, generation_config=self._generation_config)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts = self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def _generate_splitting(
        self, requests: Sequence[JudgeRequest], images: list[list[Any]]
    ) -> list[str | None]:
        """Generate; on CUDA out-of-memory retry in halves down to single requests."""
        import torch

        try:
            return list(self._generate(requests, images))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(requests) == 1:
                log.warning("judge %s: out of memory on a single request", self.model_name)
                return [None]
            half = len(requests) // 2
            return self._generate_splitting(
                requests[:half], images[:half]
            ) + self._generate_splitting(requests[half:], images[half:])

    def _decode_images(self, request: JudgeRequest) -> list[Any] | None:
        if self.modality != "vision":
            return []
        try:
            return [decode_image(data) for data in request.images]
        except Exception as error:  # Pillow raises many types for bad data
            log.warning("judge %s: undecodable image in a request: %s", self.model_name, error)
            return None

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        if not requests:
            return []
        self.load()
        replies: list[str | None] = [None] * len(requests)
        # Batches are grouped by image count: text-only and image requests never mix (processors
        # want images for every row or none); within a group similar lengths go together so
        # batches pad little.
        groups: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(len(request.images), []).append(index)
        chunks = []
        for indices in groups.values():
            indices.sort(key=lambda i: len(requests[i].system) + len(requests[i].user))
            chunks += [
                indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)
            ]
        for chunk in chunks:
            ready, ready_images = [], []
            for index in chunk:
                images = self._decode_images(requests[index])
                if images is not None:
                    ready.append(index)
                    ready_images.append(images)
            if not ready:
                continue
            texts = self._generate_splitting([requests[i] for i in ready], ready_images)
            for index, text in zip(ready, texts, strict=True):
                replies[index] = text
        return replies
