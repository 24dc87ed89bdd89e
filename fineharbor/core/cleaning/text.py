"""Text rules (FineVision, LAION, DanQing): small pure functions over turns and strings.

Turn-level rules return the turns that remain (FineVision drops over-long turns rather than
samples); sample-level rules return ``None`` or a :class:`Reject` whose detail states the measured
value against the threshold. The language detector and an optional local tokenizer are built
once per process and cached.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import (
    ALT_TEXT_SHORT,
    CAPTION_WORD_COUNT,
    LANGUAGE_NOT_ALLOWED,
    TEXT_REPETITIVE,
    TEXT_SPECIAL_CHARS,
    TEXT_UNK_TOKENS,
    TEXT_UNSAFE,
    Reject,
)

Turn = dict[str, Any]  # {"user": str | None, "assistant": str | None}

IMAGE_PLACEHOLDER = re.compile(r"<image(?:_\d+)?>|<\|image(?:_\d+)?\|>", re.IGNORECASE)
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+|\S+@\S+\.\w+", re.IGNORECASE)
# Han, kana and CJK compatibility ideographs: scripts written without spaces.
_CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK = re.compile(f"[{_CJK_CLASS}]")
_WORDS = re.compile(f"[{_CJK_CLASS}]|[^\\W_]+")
_TOKEN_PIECES = re.compile(
    f"(?P<cjk>[{_CJK_CLASS}])|(?P<latin>[A-Za-z]+)|(?P<digits>[0-9]+)|(?P<word>[^\\W\\d_]+)|(?P<other>\\S)"
)
CJK_CHARS_PER_WORD = 1.5  # mean word length of segmented Chinese text (jieba), for word counts
_SPECIAL_CATEGORIES = {"So", "Sk", "Co", "Cn", "Cs", "Cc", "Cf"}
_SPECIAL_EXTRA = {"\ufe0f", "\ufe0e", "\u200d", "\u20e3"}  # emoji presentation / ZWJ / keycap


def text_of(value: str | None) -> str:
    return value if isinstance(value, str) else ""


# --------------------------------------------------------------------------- turns


def is_caption_pair(turns: list[Turn], source: str, params: CleanParams) -> bool:
    """One turn whose user text is empty apart from image placeholders (or a listed source)."""
    if len(turns) != 1:
        return False
    if source in params.caption_pair_sources:
        return True
    return not IMAGE_PLACEHOLDER.sub("", text_of(turns[0].get("user"))).strip()


def drop_empty_turns(turns: list[Turn], params: CleanParams) -> tuple[list[Turn], int]:
    """Drop turns whose answer is empty or whitespace; returns (kept turns, dropped count)."""
    if not params.check_text_empty:
        return list(turns), 0
    kept = [t for t in turns if text_of(t.get("assistant")).strip()]
    return kept, len(turns) - len(kept)


def approx_token_count(text: str) -> int:
    """Offline estimate of a BPE token count (no vocabulary needed).

    Latin letter runs: one token per 6 letters (common words are one token, long words split);
    digit runs: one per 3 digits (GPT-4/Llama-3 style number chunks); other-script letter runs:
    one per 3 letters; Han/kana: one per character; punctuation: one each, non-ASCII symbols
    and emoji two each. Never exceeds the UTF-8 byte count.
    """
    count = 0
    for match in _TOKEN_PIECES.finditer(text):
        kind = match.lastgroup
        size = match.end() - match.start()
        if kind == "cjk":
            count += 1
        elif kind == "latin":
            count += -(-size // 6)
        elif kind in ("digits", "word"):
            count += -(-size // 3)
        else:
            count += 1 if match.group().isascii() else 2
    return count


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):  # pragma: no cover - exercised only with a local tokenizer
    location = Path(path).expanduser()
    if not location.exists():
        return None  # reported when the project file loads (core.models); the estimate counts
    if location.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(location))
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(location), local_files_only=True)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def token_count(text: str, params: CleanParams) -> int:
    count = _load_tokenizer(params.tokenizer) if params.tokenizer else None
    return count(text) if count is not None else approx_token_count(text)


def drop_long_turns(turns: list[Turn], params: CleanParams) -> tuple[list[Turn], int, int]:
    """FineVision: drop turns over ``max_turn_tokens``. Returns (kept, dropped, longest seen)."""
    if not params.check_turn_length:
        return list(turns), 0, 0
    kept: list[Turn] = []
    longest = 0
    for turn in turns:
        text = text_of(turn.get("user")) + "\n" + text_of(turn.get("assistant"))
        if len(text.encode()) <= params.max_turn_tokens:
            kept.append(turn)  # cannot exceed the cap: a token is at least one byte
            continue
        tokens = token_count(text, params)
        longest = max(longest, tokens)
        if tokens <= params.max_turn_tokens:
            kept.append(turn)
    return kept, len(turns) - len(kept), longest


# --------------------------------------------------------------------------- measures


def words(text: str) -> list[str]:
    """Lower-cased words; each Han/kana character is its own item."""
    return [w.lower() for w in _WORDS.findall(text)]


def word_count(text: str) -> int:
    """Words, counting Han/kana text as ``CJK_CHARS_PER_WORD`` characters per word."""
    cjk = len(_CJK.findall(text))
    other = len(_WORDS.findall(text)) - cjk
    return other + math.ceil(cjk / CJK_CHARS_PER_WORD)


def repetition_ratio(text: str, n: int = 3, min_words: int = 6) -> float | None:
    """1 - distinct/total word n-grams (None for texts under ``min_words`` words)."""
    items = words(text)
    if len(items) < max(min_words, n + 1):
        return None
    grams = list(zip(*(items[i:] for i in range(n)), strict=False))
    return 1.0 - len(set(grams)) / len(grams)


def _is_special(char: str) -> bool:
    if char.isascii():
        return (ord(char) < 32 and char not in "\t\n\r") or char == "\x7f"
    return char in _SPECIAL_EXTRA or unicodedata.category(char) in _SPECIAL_CATEGORIES


def special_char_ratio(text: str) -> tuple[float, int]:
    """(share of special characters among non-space characters, non-space character count)."""
    # each distinct character judged once (a text holds few): C-speed counting, same result
    counts = [(c, n) for c, n in Counter(text).items() if not c.isspace()]
    total = sum(n for _, n in counts)
    if not total:
        return 0.0, 0
    special = sum(n for c, n in counts if _is_special(c))
    return special / total, total


# --------------------------------------------------------------------------- caption rules


def rule_alt_text(caption: str, params: CleanParams) -> Reject | None:
    """LAION: alt-text under ``min_caption_chars`` (5) characters."""
    if not params.check_alt_text:
        return None
    n = len(caption.strip())
    if n < params.min_caption_chars:
        return Reject(ALT_TEXT_SHORT, f"caption {n} chars < {params.min_caption_chars}")
    return None


def rule_caption_words(caption: str, params: CleanParams) -> Reject | None:
    """DanQing: caption pairs need ``caption_min_words``..``caption_max_words`` (5-60) words."""
    if not params.check_caption_words:
        return None
    n = word_count(caption)
    if n < params.caption_min_words:
        return Reject(CAPTION_WORD_COUNT, f"caption {n} words < {params.caption_min_words}")
    if n > params.caption_max_words:
        return Reject(CAPTION_WORD_COUNT, f"caption {n} words > {params.caption_max_words}")
    return None


# --------------------------------------------------------------------------- content rules


def rule_unk_tokens(text: str, params: CleanParams) -> Reject | None:
    """DanQing text quality: ``[UNK]``-style junk left by tokenizers or broken decoding."""
    if not params.check_unk_tokens or not params.unk_tokens:
        return None
    found = {tok: text.count(tok) for tok in params.unk_tokens}
    total = sum(found.values())
    if total > params.max_unk_tokens:
        worst = max(found, key=found.__getitem__)
        return Reject(
            TEXT_UNK_TOKENS, f"unk tokens {total} > {params.max_unk_tokens} (e.g. {worst!r})"
        )
    return None


def rule_special_chars(text: str, params: CleanParams) -> Reject | None:
    """DanQing information density: emoji / symbol / control character share."""
    if not params.check_special_chars:
        return None
    ratio, n = special_char_ratio(text)
    if n >= params.special_min_chars and ratio > params.max_special_char_ratio:
        return Reject(
            TEXT_SPECIAL_CHARS, f"special chars {ratio:.2f} > {params.max_special_char_ratio}"
        )
    return None


def rule_repetition(answers: list[str], params: CleanParams) -> Reject | None:
    """Degenerate repetition in any answer (word n-gram duplicate ratio)."""
    if not params.check_repetition:
        return None
    for answer in answers:
        ratio = repetition_ratio(answer, params.repetition_ngram, params.repetition_min_words)
        if ratio is not None and ratio > params.max_repetition_ratio:
            return Reject(
                TEXT_REPETITIVE,
                f"repetition {ratio:.2f} > {params.max_repetition_ratio} "
                f"({params.repetition_ngram}-grams)",
            )
    return None


@functools.lru_cache(maxsize=8)
def _unsafe_pattern(terms: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = []
    for term in terms:
        escaped = r"\s+".join(re.escape(piece) for piece in term.strip().split())
        if _CJK.search(term):
            parts.append(escaped)
        else:
            parts.append(rf"(?<!\w){escaped}(?!\w)")
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def rule_unsafe(text: str, params: CleanParams) -> Reject | None:
    """DanQing / LAION safety: a configured unsafe term occurs (whole words, any case)."""
    if not params.check_safety:
        return None
    pattern = _unsafe_pattern(tuple(params.unsafe_terms))
    if pattern is None:
        return None
    match = pattern.search(text)
    if match:
        return Reject(TEXT_UNSAFE, f"unsafe term {match.group(0).lower()!r}")
    return None


# --------------------------------------------------------------------------- language


@functools.lru_cache(maxsize=4)
def _detector(codes: tuple[str, ...]):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    if len(languages) == 1:  # lingua needs at least two candidates
        extra = Language.ENGLISH if languages[0] != Language.ENGLISH else Language.FRENCH
        languages.append(extra)
    builder = LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models()
    return builder.build()


def language_detector(params: CleanParams):
    """The process-wide lingua detector for ``params`` (built once, models preloaded)."""
    return _detector(tuple(params.lingua_languages))


def language_text(texts: list[str], params: CleanParams) -> str:
    """Text handed to the detector: placeholders, URLs and e-mails removed, length capped."""
    joined = "\n".join(t for t in texts if t)
    joined = IMAGE_PLACEHOLDER.sub(" ", joined)
    joined = _URL.sub(" ", joined)
    return joined[: params.language_max_chars]


def letter_weight(text: str) -> int:
    """Letters, Han/kana counted three times (one character carries about a word)."""
    return sum(n * (3 if _CJK.match(c) else 1) for c, n in Counter(text).items() if c.isalpha())


def language_scores(text: str, params: CleanParams) -> list[tuple[str, float]] | None:
    """lingua's (ISO 639-1 code, confidence) pairs, best first; None when the text is too short."""
    if letter_weight(text) < params.language_min_chars:
        return None
    values = language_detector(params).compute_language_confidence_values(text)
    return [(v.language.iso_code_639_1.name.lower(), float(v.value)) for v in values] or None


def rule_language(
    texts: list[str], params: CleanParams
) -> tuple[Reject | None, str | None, float | None]:
    """DanQing / LAION language filter. Returns (reject, detected code, confidence).

    A sample is rejected only when lingua is reasonably sure: the top language is not allowed,
    its confidence is at least ``language_min_confidence`` and it leads the best allowed language
    by ``language_min_margin`` (short English UI strings such as "Tick the Send newsletter
    checkbox" score German 0.41 vs English 0.38).
    """
    if not params.check_language:
        return None, None, None
    scores = language_scores(language_text(texts, params), params)
    if not scores:
        return None, None, None
    code, confidence = scores[0]
    if code in params.languages_allowed or confidence < params.language_min_confidence:
        return None, code, confidence
    allowed = max((v for c, v in scores if c in params.languages_allowed), default=0.0)
    if confidence - allowed < params.language_min_margin:
        return None, code, confidence
    names = ",".join(params.languages_allowed)
    detail = f"language {code} ({confidence:.2f}) not in [{names}]"
    return Reject(LANGUAGE_NOT_ALLOWED, detail), code, confidence
