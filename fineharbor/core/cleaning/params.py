"""Parameters of the cleaning stage: every threshold with its paper default and a switch per rule.

Sources of the defaults (see ``/work/shared/reference/papers.md``):

- FineVision: longest side 2048 (resize, keep aspect), per-turn cap 8192 tokens (turns are
  dropped, not samples), corrupt images removed, unified GUI action space.
- LAION-400M/5B: alt-text >= 5 characters, image >= 5 KB, oversized "DOS-bomb" images dropped.
- DataComp: min side 200 px and aspect ratio <= 3.0 for image-caption pairs.
  The 5 KB, min-side and aspect-ratio rules were made for web alt-text pairs: by default
  (``web_pair_rules: auto``) they apply to web caption sources only.
- DanQing: language allowlist, source (domain) trust, caption length 5-60 words, safety terms,
  information density (emoji / special characters), ``[UNK]`` junk, visual fidelity.

Where no paper gives a number the field description says how the default was chosen. Integrity
rules (missing, corrupt, truncated, format not allowed, decompression bomb, decode timeout) have
no switch: an image that cannot be decoded safely is never kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fineharbor.core.strict import StrictModel

# Pillow format names whose decoders run fully in process (no external program, no delegate):
# the raster formats real image folders hold. MPO is the multi-picture JPEG many cameras write;
# Pillow reports it as its own format. Everything else (EPS/PDF via Ghostscript, SVG, WMF, FITS,
# the scientific and game formats) is refused as image_format_not_allowed.
SAFE_FORMATS = (
    "JPEG", "MPO", "PNG", "WEBP", "AVIF", "GIF", "BMP", "DIB", "TIFF", "ICO", "PPM", "QOI",
    "TGA", "JPEG2000", "PSD", "PCX", "SGI", "DDS",
)  # fmt: skip
ImageFormat = Literal[
    "JPEG", "MPO", "PNG", "WEBP", "AVIF", "GIF", "BMP", "DIB", "TIFF", "ICO", "PPM", "QOI",
    "TGA", "JPEG2000", "PSD", "PCX", "SGI", "DDS",
]  # fmt: skip
Scope = Literal["all", "pairs"]
PiiMode = Literal["flag", "redact", "drop"]
SourcePiiMode = Literal["off", "flag", "redact", "drop"]

# The most common web languages plus the main non-Latin scripts. Each high-accuracy lingua model
# costs ~25 MB per worker process (12 languages: ~330 MB, built in ~1.5 s).
DEFAULT_LANGUAGE_CANDIDATES = [
    "en", "fr", "de", "es", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar",
]  # fmt: skip

DEFAULT_UNK_TOKENS = [
    "[UNK]",
    "<unk>",
    "[PAD]",
    "<pad>",
    "[MASK]",
    "[CLS]",
    "[SEP]",
    "<|endoftext|>",
    "\ufffd",  # the Unicode replacement character: text that was mis-decoded upstream
]

# A deliberately small, unambiguous default; real deployments configure their own list.
DEFAULT_UNSAFE_TERMS = [
    "porn",
    "porno",
    "pornographic",
    "pornography",
    "hentai",
    "nsfw",
    "child pornography",
    "child sexual abuse",
    "csam",
    "lolicon",
    "shotacon",
    "bestiality",
    "zoophilia",
    "incest",
    "rape",
]


class CleanParams(StrictModel):
    """Thresholds and switches of the cleaning stage (``stages.clean`` in ``fineharbor.yaml``)."""

    # ------------------------------------------------------------------ decoding and resizing
    allowed_formats: list[ImageFormat] = Field(
        default_factory=lambda: list(SAFE_FORMATS),
        description="image formats that may be decoded, identified from the file header (every "
        "in-process raster decoder by default: a real folder holds PPM, TGA, ICO, PSD... and "
        "each is decoded in a worker with a pixel and a time limit). Only in-process decoders "
        "can be listed: EPS/PS/PDF (Ghostscript), SVG and every other format are refused with "
        "image_format_not_allowed. MPO is the multi-picture JPEG of cameras",
    )
    decode_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="wall-clock limit per image (open, decode, convert, resize, re-encode), "
        "enforced by the process pool: a stalled decoder is killed and costs one "
        "image_decode_timeout row. The largest allowed image (an 89 MP PNG) took 3.7 s on a "
        "2-core machine at load average 9; 30 s leaves a wide margin, and a stall costs one "
        "worker at most that long",
    )
    max_pixels: int = Field(
        89_478_485,
        ge=1,
        description="too_many_pixels above this (width x height from the header, checked before "
        "decoding). Pillow's own default MAX_IMAGE_PIXELS: 0.25 GiB as 24-bit RGB, i.e. ~9459 px "
        "square, far beyond any useful training image and a bound on worker memory",
    )
    decompression_bomb_pixels: int = Field(
        178_956_970,
        ge=1,
        description="decompression_bomb above this (checked from the header before any pixel is "
        "allocated). Twice max_pixels, like Pillow's DecompressionBombError level",
    )
    jpeg_draft: bool = Field(
        True,
        description="let libjpeg decode with DCT scaling where full resolution is not needed: "
        "JPEGs kept byte-for-byte are verified by a scaled decode (every entropy-coded block is "
        "still read, so truncation and corruption are caught) and JPEGs larger than twice "
        "max_image_side are decoded at the largest 1/2^k scale still above it before LANCZOS",
    )
    resize: bool = Field(True, description="FineVision: resize when the longest side is too long")
    max_image_side: int = Field(
        2048, ge=16, description="FineVision: longest side after resizing (LANCZOS, aspect kept)"
    )
    jpeg_quality: int = Field(95, ge=1, le=100, description="quality when re-encoding JPEG")
    webp_quality: int = Field(95, ge=1, le=100, description="quality when re-encoding WEBP")
    png_compress_level: int = Field(
        3,
        ge=0,
        le=9,
        description="zlib level when re-encoding PNG: 3 is ~1.5x faster than Pillow's 6 for ~30% "
        "larger files on photos",
    )
    reencode_unchanged: bool = Field(
        False,
        description="re-encode every image. Off: an RGB JPEG/PNG/WEBP that needs no rotation, "
        "conversion or resize keeps its original bytes (no generation loss)",
    )

    # ------------------------------------------------------------ size rules (LAION, DataComp)
    check_image_bytes: bool = True
    min_image_bytes: int = Field(5120, ge=0, description="LAION: images under 5 KB are dropped")
    image_bytes_scope: Scope = Field(
        "all",
        description="within the sources web_pair_rules selects: all samples, or caption pairs",
    )
    check_min_side: bool = True
    min_side: int = Field(200, ge=1, description="DataComp: shorter side in px, for caption pairs")
    min_side_scope: Scope = Field(
        "pairs",
        description="pairs (default): VQA/OCR sources legitimately hold small crops and icons",
    )
    check_aspect_ratio: bool = True
    max_aspect_ratio: float = Field(3.0, ge=1.0, description="DataComp: longer / shorter side")
    aspect_ratio_scope: Scope = Field(
        "all",
        description="within the sources web_pair_rules selects: all samples, or caption pairs",
    )
    check_max_pixels: bool = Field(True, description="switch of the too_many_pixels rule")
    web_pair_rules: Literal["auto", "always", "never"] = Field(
        "auto",
        description="where the two rules made for web alt-text pairs apply: DataComp's aspect "
        "ratio and LAION's minimum bytes. auto: web caption sources only (url_list sources, "
        "sources mapped with the laion or webdataset_caption preset, and web_pair_sources, "
        "minus web_pair_exempt_sources); always: every source, as the papers did on web "
        "crawls; never: no source. Applied everywhere they drop tall documents, receipts, "
        "screenshots, small charts and fax pages",
    )
    web_pair_sources: list[str] = Field(
        default_factory=list,
        description="more sources that get the web pair rules under auto (scraped pairs read "
        "by another reader); the project adds its url_list and caption-preset sources itself",
    )
    web_pair_exempt_sources: list[str] = Field(
        default_factory=list,
        description="sources that never get the web pair rules under auto (e.g. a URL list "
        "of screenshots)",
    )

    # ------------------------------------------------------------------ image quality (DanQing)
    quality_max_side: int = Field(
        512,
        ge=32,
        description="blur and entropy are measured on the grayscale image box-reduced to at most "
        "this side (cheap, and independent of the stored resolution)",
    )
    check_blur: bool = True
    min_laplacian_var: float = Field(
        5.0,
        ge=0,
        description="image_blurry below this variance of the 4-neighbour Laplacian. DanQing gives "
        "no number; measured on generated scenes: sharp photos/charts/documents 20-3000, one sharp "
        "shape on a smooth gradient ~20, Gaussian blur sigma>=6 px on a 1600 px image < 4",
    )
    check_entropy: bool = True
    min_entropy_bits: float = Field(
        0.05,
        ge=0,
        description="image_low_entropy when the Shannon entropy of the 256-level gray histogram is "
        "below this (flat images, also after JPEG, measure 0.0; a page with three lines of text "
        "~0.09; photos 2-7). Low on purpose: documents and charts have low entropy too",
    )
    min_gray_std: float = Field(
        2.0,
        ge=0,
        description="image_low_entropy when the gray standard deviation is below this: catches "
        "near-uniform images with sensor noise or dithering, which have entropy but no content "
        "(a sparse text page measures ~6, photos 10-80)",
    )

    # ------------------------------------------------------ text (FineVision, LAION, DanQing)
    check_text_empty: bool = Field(
        True, description="drop turns whose answer is empty; text_empty when none remain"
    )
    check_turn_length: bool = True
    max_turn_tokens: int = Field(
        8192, ge=1, description="FineVision: turns whose question + answer exceed this are dropped"
    )
    tokenizer: str | None = Field(
        None,
        description="null: an offline regex word-piece estimate (no download). Otherwise a local "
        "tokenizer.json file or a local transformers tokenizer directory (loaded with "
        "local_files_only=True, once per process)",
    )
    caption_pair_sources: list[str] = Field(
        default_factory=list,
        description="sources whose single-turn samples are caption pairs whatever the user text "
        "(otherwise a pair is one turn whose user text is empty apart from <image> placeholders)",
    )
    check_alt_text: bool = True
    min_caption_chars: int = Field(5, ge=0, description="LAION: alt-text under 5 characters")
    check_caption_words: bool = True
    caption_min_words: int = Field(5, ge=0, description="DanQing: caption pairs 5-60 words")
    caption_max_words: int = Field(60, ge=1, description="DanQing: caption pairs 5-60 words")
    check_language: bool = True
    languages_allowed: list[str] = Field(
        default_factory=lambda: ["en"], description="ISO 639-1 codes kept (lingua detection)"
    )
    language_candidates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LANGUAGE_CANDIDATES),
        description="languages lingua chooses among (fewer is faster and lighter: ~25 MB of "
        "models per language per worker process). The allowed languages are always added",
    )
    language_min_chars: int = Field(
        20,
        ge=1,
        description="texts with fewer letters (a Han/kana character counts 3) are not judged "
        "and their language stays null: lingua is unreliable on a handful of words, and short "
        "VQA answers carry no language signal",
    )
    language_min_confidence: float = Field(
        0.4,
        ge=0,
        le=1,
        description="language_not_allowed only when lingua's confidence in the detected language "
        "is at least this; short English captions often score 0.2-0.3 with a competing language "
        "close behind, French/Chinese captions of a sentence 0.55-1.0",
    )
    language_min_margin: float = Field(
        0.2,
        ge=0,
        le=1,
        description="and only when the detected language leads the best allowed language by at "
        "least this much (near ties on short texts are kept)",
    )
    language_max_chars: int = Field(
        2000, ge=100, description="only the first characters are examined (speed)"
    )
    check_repetition: bool = True
    max_repetition_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="text_repetitive when 1 - distinct/total word n-grams exceeds this in any "
        "answer (Gopher-style; natural text ~0-0.1, step-by-step math ~0.2, degenerate loops "
        "> 0.6)",
    )
    repetition_ngram: int = Field(3, ge=1, le=10)
    repetition_min_words: int = Field(6, ge=2, description="shorter answers are not judged")
    check_special_chars: bool = True
    max_special_char_ratio: float = Field(
        0.25,
        ge=0,
        le=1,
        description="DanQing information density: share of emoji, pictographs, private-use, "
        "unassigned and control characters among non-space characters. ASCII punctuation and "
        "math symbols are never counted (LaTeX and code answers stay)",
    )
    special_min_chars: int = Field(4, ge=1, description="shorter texts are not judged")
    check_unk_tokens: bool = True
    unk_tokens: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNK_TOKENS),
        description="DanQing: literal junk tokens left by tokenizers and broken decoders",
    )
    max_unk_tokens: int = Field(0, ge=0, description="text_unk_tokens above this many occurrences")
    check_safety: bool = True
    unsafe_terms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNSAFE_TERMS),
        description="case-insensitive whole-word (whole-phrase) matches; terms in scripts "
        "without spaces (CJK) match as substrings",
    )

    # ------------------------------------------------------------------ personal data (PII)
    check_pii: bool = Field(
        True,
        description="switch of PII detection in turns (emails, phone numbers, IP "
        "addresses, payment cards, IBANs, street addresses; see docs/safety.md)",
    )
    pii_mode: PiiMode = Field(
        "flag",
        description="what the cleaning does with a sample whose turns hold PII, for sources not "
        "in pii_source_modes. flag: keep it and list the types found in the pii_found column; "
        "redact: replace each match by a typed placeholder such as <EMAIL_ADDRESS> (NeMo "
        "Curator's PII modifier) and list them in pii_found; drop: reject it as pii_found, the "
        "detail naming the types, never the text",
    )
    pii_source_modes: dict[str, SourcePiiMode] = Field(
        default_factory=dict,
        description="per-source override of pii_mode (off, flag, redact or drop), e.g. redact "
        "a scraped caption source and leave a synthetic one off",
    )
    pii_phone_regions: list[str] = Field(
        default_factory=lambda: ["US"],
        description="regions (ISO 3166 alpha-2, as libphonenumber names them) whose national "
        "phone formats are recognised; numbers written with a +country code are found for any "
        "region. Each region is one more pass over texts that hold digits",
    )

    # ------------------------------------------------------------------ hash blocklists
    check_blocklist: bool = Field(
        True, description="switch of the blocklisted_image rule (it does nothing without lists)"
    )
    blocklists: list[str] = Field(
        default_factory=list,
        description="image hash blocklist files (one 'KIND HASH' per line: sha256 of the file "
        "bytes, sha256_pixels, phash; see docs/safety.md). Every image matching an entry is "
        "rejected as blocklisted_image before any other rule looks at it. Relative paths are "
        "relative to the project file; a missing or malformed file fails at config load",
    )
    blocklist_phash_distance: int = Field(
        4,
        ge=0,
        le=16,
        description="a phash entry matches images whose 64-bit phash is at most this many bits "
        "away: re-encoded and resized copies measure 0-2 on the demo, as for dedup's "
        "phash_max_distance (4); 0 asks for the exact hash",
    )

    # ------------------------------------------------------------------ source trust (DanQing)
    check_domain: bool = True
    domain_allow: list[str] = Field(
        default_factory=list,
        description="when not empty only these domains (and their subdomains) are kept; applies "
        "to samples whose origin_uri is an http(s) URL",
    )
    domain_deny: list[str] = Field(
        default_factory=list,
        description="domains (and subdomains) always rejected; wins over allow",
    )

    # ------------------------------------------------------------------ GUI actions (FineVision)
    gui_action_sources: list[str] = Field(
        default_factory=list,
        description="sources whose assistant turns are agent actions; they are normalised to the "
        "unified action space and unparseable ones rejected",
    )

    # ------------------------------------------------------------------ execution
    processes: int = Field(
        0, ge=0, le=512, description="worker processes for clean_batches; 0 = one per CPU core"
    )
    start_method: Literal["forkserver", "spawn", "fork"] = Field(
        "forkserver",
        description="how workers start. forkserver forks replacements from a clean preloaded "
        "server (fast restarts after a crash, safe in threaded parents)",
    )
    worker_memory_limit_mb: int | None = Field(
        None,
        ge=256,
        description="optional RLIMIT_AS per worker: an allocation beyond it fails that image "
        "instead of waking the OOM killer",
    )

    # ------------------------------------------------------------------ validation

    @field_validator("allowed_formats")
    @classmethod
    def _formats_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("allowed_formats is empty: no image could ever be kept")
        return sorted(set(value), key=value.index)

    @field_validator("languages_allowed", "language_candidates")
    @classmethod
    def _iso_codes(cls, value: list[str]) -> list[str]:
        from lingua import Language

        known = {language.iso_code_639_1.name.lower() for language in Language.all()}
        codes = [code.strip().lower() for code in value]
        unknown = [code for code in codes if code not in known]
        if unknown:
            raise ValueError(
                f"unknown ISO 639-1 code(s) {unknown}: use two-letter codes lingua supports"
            )
        return list(dict.fromkeys(codes))

    @field_validator("domain_allow", "domain_deny")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [d.strip().lower().lstrip(".") for d in value if d.strip()]

    @field_validator("unsafe_terms", "unk_tokens")
    @classmethod
    def _no_blank_terms(cls, value: list[str]) -> list[str]:
        if any(not term.strip() for term in value):
            raise ValueError("blank term in list")
        return value

    @field_validator("pii_phone_regions")
    @classmethod
    def _phone_regions(cls, value: list[str]) -> list[str]:
        import phonenumbers

        regions = [region.strip().upper() for region in value]
        unknown = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone region(s) {unknown}: use ISO 3166 alpha-2 codes")
        return list(dict.fromkeys(regions))

    @field_validator("blocklists")
    @classmethod
    def _blocklists_readable(cls, value: list[str]) -> list[str]:
        from fineharbor.core.cleaning import blocklist

        paths = [str(Path(path).expanduser().resolve()) for path in value]
        try:
            blocklist.read_all(paths)
        except blocklist.BlocklistError as error:
            raise ValueError(str(error)) from None
        return paths

    @model_validator(mode="after")
    def _consistent(self) -> CleanParams:
        if self.decompression_bomb_pixels < self.max_pixels:
            raise ValueError("decompression_bomb_pixels must be >= max_pixels")
        if self.caption_min_words > self.caption_max_words:
            raise ValueError("caption_min_words must be <= caption_max_words")
        if self.check_language and not self.languages_allowed:
            raise ValueError("languages_allowed is empty while check_language is on")
        return self

    # ------------------------------------------------------------------ helpers

    @property
    def worker_count(self) -> int:
        return self.processes or max(1, os.cpu_count() or 1)

    @property
    def lingua_languages(self) -> list[str]:
        return list(dict.fromkeys([*self.languages_allowed, *self.language_candidates]))

    def pii_mode_for(self, source: str) -> str:
        """off, flag, redact or drop: what the PII rule does for ``source``."""
        if not self.check_pii:
            return "off"
        return self.pii_source_modes.get(source, self.pii_mode)

    def web_pair_rules_apply(self, source: str) -> bool:
        """Whether DataComp's min-side and aspect-ratio rules and LAION's byte rule, made for web
        alt-text pairs, apply to ``source``; under auto, the sources in ``web_pair_sources`` (which
        :meth:`ProjectConfig.clean_params` completes with the project's web caption sources)."""
        if self.web_pair_rules != "auto":
            return self.web_pair_rules == "always"
        return source in self.web_pair_sources and source not in self.web_pair_exempt_sources

    def web_pair_scope(self) -> str:
        """One sentence on where the web pair rules applied, for the dataset card."""
        rules = []
        if self.check_min_side:
            rules.append(f"shorter side >= {self.min_side} px (DataComp)")
        if self.check_aspect_ratio:
            rules.append(f"aspect ratio <= {self.max_aspect_ratio:g} (DataComp)")
        if self.check_image_bytes:
            rules.append(f"image >= {self.min_image_bytes} bytes (LAION)")
        if not rules:
            return (
                "Cleaning: the web alt-text pair rules (side, aspect ratio, image bytes) were off."
            )
        listed = ", ".join(rules[:-1]) + " and " + rules[-1] if len(rules) > 1 else rules[0]
        what = "Cleaning: the web alt-text pair rules " + listed
        if self.web_pair_rules == "always":
            return what + " applied to every source."
        names = [s for s in self.web_pair_sources if s not in self.web_pair_exempt_sources]
        if self.web_pair_rules == "never" or not names:
            return what + " applied to no source."
        others = "other sources keep tall and small images"
        return f"{what} applied only to the sources {', '.join(names)}; {others}."
