"""Cleaning rules as data: :data:`RULES` declares every rule of the cleaning stage, in order.

A rule is one :class:`Rule` entry: its reject code(s), its scope (which samples or images it
judges), the step where it runs, the ``check_*`` switch that turns it off, and its check.
Everything else is derived from the table: the order :func:`row_reject` and the image pipeline
(:mod:`fineharbor.core.cleaning.images`) evaluate the rules in, the web pair rules the stage
switches off outside web caption sources, :data:`REASONS`, and the table in
``docs/cleaning-rules.md`` (:func:`rules_table`).

Row checks take a :class:`Sample` and image checks an :class:`ImageFacts`; both return ``None``
(passes) or a :class:`Reject` whose detail states the measured value against the threshold.
Entries without a check are integrity outcomes the decoder or the worker pool reports; they
have no switch (an image that cannot be decoded safely is never kept).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fineharbor.core.cleaning import blocklist, domains, gui_actions, pii, quality, text
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import (
    ALT_TEXT_SHORT,
    ASPECT_RATIO,
    BLOCKLISTED_IMAGE,
    CAPTION_WORD_COUNT,
    DECOMPRESSION_BOMB,
    DOCUMENT_SEGMENTS_MISMATCH,
    DOMAIN_DENIED,
    DOMAIN_NOT_ALLOWED,
    GUI_ACTION_UNPARSEABLE,
    IMAGE_BLURRY,
    IMAGE_CORRUPT,
    IMAGE_DECODE_TIMEOUT,
    IMAGE_FORMAT_NOT_ALLOWED,
    IMAGE_LOW_ENTROPY,
    IMAGE_MISSING,
    IMAGE_TOO_SMALL_BYTES,
    IMAGE_TOO_SMALL_SIDE,
    IMAGE_TRUNCATED,
    LANGUAGE_NOT_ALLOWED,
    PII_FOUND,
    TEXT_EMPTY,
    TEXT_REPETITIVE,
    TEXT_SPECIAL_CHARS,
    TEXT_UNK_TOKENS,
    TEXT_UNSAFE,
    TOO_MANY_PIXELS,
    TURN_TOO_LONG,
    WORKER_CRASHED,
    Reject,
)
from fineharbor.core.signatures import hashing

# sample: every sample; text: samples with turns (image-only samples skip them); caption: caption
# pairs (one turn, no question); image: every image; web: images of web caption sources only
# (``web_pair_rules``)
Scope = Literal["sample", "text", "caption", "image", "web"]
# row: on the sample before any image is decoded; header: on an image's header, no pixel
# allocated; decoded: after the full decode; pool: reported by the worker pool
Step = Literal["row", "header", "decoded", "pool"]

SCOPE_TEXT: dict[str, str] = {
    "sample": "every sample",
    "text": "samples with turns",
    "caption": "caption pairs",
    "image": "every image",
    "web": "images of web caption sources",
}
STEP_TEXT: dict[str, str] = {
    "row": "sample, before any decode",
    "header": "image header",
    "decoded": "decoded image",
    "pool": "worker pool",
}


@dataclass(frozen=True)
class Rule:
    """One cleaning rule. ``check`` is ``None`` for integrity outcomes the decoder or pool
    reports; ``enabled_by`` names the :class:`CleanParams` switch (``None``: always on)."""

    codes: tuple[str, ...]
    scope: Scope
    step: Step
    enabled_by: str | None
    check: Callable[[Any, CleanParams], Reject | None] | None
    what: str

    def enabled(self, params: CleanParams) -> bool:
        return self.enabled_by is None or bool(getattr(params, self.enabled_by))


# --------------------------------------------------------------------------- what rules see


@dataclass(frozen=True)
class Texts:
    """The texts the content rules judge, taken from the turns that remain."""

    users: list[str]
    answers: list[str]
    prose_answers: list[str]  # GUI answers are code, not language
    all_text: str
    prose: str
    pair: bool


class Sample:
    """One sample as the row rules see it. Turn rules narrow :attr:`turns` (FineVision drops
    turns, not samples); the language rule records what it measured."""

    def __init__(self, row: dict[str, Any], params: CleanParams) -> None:
        self.row = row
        self.params = params
        self.source = str(row.get("source") or "")
        self.turns: list[dict] = [
            {"user": text.text_of(t.get("user")), "assistant": text.text_of(t.get("assistant"))}
            for t in (row.get("texts") or [])
            if t is not None
        ]
        self.has_text = bool(self.turns)
        self.has_images = bool(row.get("images"))
        self.gui = self.source in params.gui_action_sources
        self.dropped = 0
        self.parsed: dict[int, list] = {}  # GUI actions by id(turn)
        self.language: str | None = None
        self.confidence: float | None = None
        self.pii: list[str] | None = None  # the PII types found, one per match; None: not checked
        self._texts: Texts | None = None

    def keep(self, turns: list[dict], dropped: int) -> None:
        self.turns = turns
        self.dropped += dropped
        self._texts = None

    def redact(self, turns: list[dict]) -> None:
        """Replace the turns' texts (same turns, same order); GUI actions parsed from the old
        answers stay keyed by their new turns."""
        self.parsed = {
            id(new): self.parsed[id(old)]
            for old, new in zip(self.turns, turns, strict=True)
            if id(old) in self.parsed
        }
        self.keep(turns, 0)

    @property
    def texts(self) -> Texts:
        if self._texts is None:
            users = [t["user"] for t in self.turns]
            answers = [t["assistant"] for t in self.turns]
            prose_answers = [] if self.gui else answers
            self._texts = Texts(
                users,
                answers,
                prose_answers,
                "\n".join(users + answers),
                "\n".join(users + prose_answers),
                # a document's one turn (no question) is its whole text, not a caption
                text.is_caption_pair(self.turns, self.source, self.params)
                and self.row.get("segments") is None,
            )
        return self._texts

    @property
    def pair(self) -> bool:
        return self.texts.pair


class ImageFacts:
    """One image as the image rules see it: the stored size and byte count from the header,
    then the displayed size, a grayscale thumbnail and the hashes (measured once, on first
    use)."""

    def __init__(self, stored: tuple[int, int], n_bytes: int, *, pair: bool) -> None:
        self.stored = stored
        self.n_bytes = n_bytes
        self.pair = pair
        self.size = stored
        self._pixels: Callable[[], np.ndarray] | None = None
        self._rgb: Callable[[], Any] | None = None
        self._full_rgb: Callable[[], Any] | None = None

    def decoded(
        self,
        size: tuple[int, int],
        pixels: Callable[[], np.ndarray],
        rgb: Any = None,
        full_rgb: Callable[[], Any] | None = None,
    ) -> None:
        """``pixels`` makes the gray thumbnail; ``rgb`` is the decoded RGB image (possibly at a
        reduced JPEG scale), ``full_rgb`` makes the image exactly as
        :func:`fineharbor.core.signatures.hashing.decode_rgb` decodes it (None: ``rgb`` is)."""
        self.size = size
        self._pixels = pixels
        self._rgb = lambda: rgb
        self._full_rgb = full_rgb or self._rgb

    def _needs(self, what: Callable[[], Any] | None) -> Any:
        if what is None:
            raise RuntimeError("pixels are measured only after the decode")
        return what()

    @functools.cached_property
    def gray(self) -> np.ndarray:
        return self._needs(self._pixels)

    @functools.cached_property
    def sha256_pixels(self) -> str:
        return hashing.sha256_pixels(self._needs(self._full_rgb))

    @functools.cached_property
    def phash(self) -> int:
        # phash is robust to the reduced JPEG scale: no second decode
        return hashing.perceptual_hashes(self._needs(self._rgb))[0]

    @functools.cached_property
    def entropy(self) -> float:
        return quality.gray_entropy(self.gray)

    @functools.cached_property
    def laplacian(self) -> float:
        return quality.laplacian_variance(self.gray)


# --------------------------------------------------------------------------- row checks


def _blocklisted_bytes(sample: Sample, params: CleanParams) -> Reject | None:
    if not params.blocklists:
        return None
    lists = [bl for bl in blocklist.read_all(params.blocklists) if bl.sha256]
    images = sample.row.get("images") or []
    for j, image in enumerate(images):
        data = image.get("bytes") if image else None
        if not data or not lists:
            continue
        digest = hashing.sha256_bytes(data)
        for bl in lists:
            line = bl.sha256.get(digest)
            if line is not None:
                prefix = f"image {j}: " if len(images) > 1 else ""
                detail = f"{prefix}sha256 of the file bytes on blocklist {bl.name} (line {line})"
                return Reject(BLOCKLISTED_IMAGE, detail)
    return None


def _domain(sample: Sample, params: CleanParams) -> Reject | None:
    return domains.rule_domain(sample.row.get("origin_uri"), params)


def _nothing_to_clean(sample: Sample, params: CleanParams) -> Reject | None:
    if sample.has_text or sample.has_images:
        return None
    return Reject(TEXT_EMPTY, "no turns and no images")


def _empty_answers(sample: Sample, params: CleanParams) -> Reject | None:
    kept, dropped = text.drop_empty_turns(sample.turns, params)
    if not kept:
        return Reject(TEXT_EMPTY, f"all {len(sample.turns)} turns have empty answers")
    sample.keep(kept, dropped)
    return None


def _gui_actions(sample: Sample, params: CleanParams) -> Reject | None:
    # parsed now (cheap); coordinates are normalised once the screenshot size is known
    if not sample.gui:
        return None
    for i, turn in enumerate(sample.turns):
        try:
            sample.parsed[id(turn)] = gui_actions.parse_actions(turn["assistant"])
        except gui_actions.GuiActionError as error:
            return Reject(GUI_ACTION_UNPARSEABLE, f"turn {i}: {error}")
    return None


def _long_turns(sample: Sample, params: CleanParams) -> Reject | None:
    before = len(sample.turns)
    kept, n_long, longest = text.drop_long_turns(sample.turns, params)
    if not kept:
        detail = f"turn tokens {longest} > {params.max_turn_tokens} (all {before} turns dropped)"
        return Reject(TURN_TOO_LONG, detail)
    sample.keep(kept, n_long)
    return None


def _pii(sample: Sample, params: CleanParams) -> Reject | None:
    mode = params.pii_mode_for(sample.source)
    if mode == "off":
        return None
    regions = params.pii_phone_regions
    found: list[str] = []
    turns: list[dict] = []
    for turn in sample.turns:
        out = dict(turn)
        # GUI answers are agent actions, parsed already: only their questions are prose
        for role in ("user",) if sample.gui else ("user", "assistant"):
            matches = pii.find(turn[role], regions)
            found += [m.type for m in matches]
            if matches and mode == "redact":
                out[role] = pii.redact(turn[role], matches)
        turns.append(out)
    sample.pii = found
    if found and mode == "drop":
        return Reject(PII_FOUND, pii.summary(found))
    if found and mode == "redact":
        sample.redact(turns)
    return None


def _unsafe(sample: Sample, params: CleanParams) -> Reject | None:
    return text.rule_unsafe(sample.texts.all_text, params)


def _alt_text(sample: Sample, params: CleanParams) -> Reject | None:
    return text.rule_alt_text(sample.texts.answers[0], params)


def _caption_words(sample: Sample, params: CleanParams) -> Reject | None:
    return text.rule_caption_words(sample.texts.answers[0], params)


def _unk_tokens(sample: Sample, params: CleanParams) -> Reject | None:
    return text.rule_unk_tokens(sample.texts.all_text, params)


def _special_chars(sample: Sample, params: CleanParams) -> Reject | None:
    return text.rule_special_chars(sample.texts.prose, params)


def _repetition(sample: Sample, params: CleanParams) -> Reject | None:
    return text.rule_repetition(sample.texts.prose_answers, params)


def _language(sample: Sample, params: CleanParams) -> Reject | None:
    texts = sample.texts
    found, sample.language, sample.confidence = text.rule_language(
        texts.users + texts.prose_answers, params
    )
    return found


# --------------------------------------------------------------------------- image checks


def _blocklisted_pixels(image: ImageFacts, params: CleanParams) -> Reject | None:
    if not params.blocklists:
        return None
    for bl in blocklist.read_all(params.blocklists):
        line = bl.sha256_pixels.get(image.sha256_pixels) if bl.sha256_pixels else None
        if line is not None:
            return Reject(
                BLOCKLISTED_IMAGE,
                f"sha256 of the decoded pixels on blocklist {bl.name} (line {line})",
            )
        found = bl.phash_match(image.phash, params.blocklist_phash_distance)
        if found is not None:
            line, apart = found
            return Reject(
                BLOCKLISTED_IMAGE,
                f"phash {apart} bits <= {params.blocklist_phash_distance} from blocklist "
                f"{bl.name} (line {line})",
            )
    return None


def _max_pixels(image: ImageFacts, params: CleanParams) -> Reject | None:
    return quality.rule_max_pixels(image.stored, params)


def _min_side(image: ImageFacts, params: CleanParams) -> Reject | None:
    return quality.rule_min_side(image.size, params, pair=image.pair)


def _aspect_ratio(image: ImageFacts, params: CleanParams) -> Reject | None:
    return quality.rule_aspect_ratio(image.size, params, pair=image.pair)


def _image_bytes(image: ImageFacts, params: CleanParams) -> Reject | None:
    return quality.rule_image_bytes(image.n_bytes, params, pair=image.pair)


def _low_entropy(image: ImageFacts, params: CleanParams) -> Reject | None:
    return quality.rule_low_entropy(image.gray, params, entropy=image.entropy)


def _blur(image: ImageFacts, params: CleanParams) -> Reject | None:
    return quality.rule_blur(image.laplacian, params)


# --------------------------------------------------------------------------- the table

# The order is the evaluation order: the first rule that fails rejects the sample. Every text
# rule runs before any image is decoded; size rules run after the full decode on purpose, so a
# broken file is reported as broken whatever its size. Columns: Rule(codes, scope, step,
# enabled_by, check, what).
RULES: tuple[Rule, ...] = (
    Rule((BLOCKLISTED_IMAGE,), "image", "row", "check_blocklist", _blocklisted_bytes,
         "safety: the sha256 of an image's bytes is on a configured blocklist (checked before "
         "any other rule or decoder sees the sample)"),
    Rule((DOMAIN_DENIED, DOMAIN_NOT_ALLOWED), "sample", "row", "check_domain", _domain,
         "DanQing source trust: host of an http(s) origin_uri in domain_deny, or not in a "
         "non-empty domain_allow"),
    Rule((TEXT_EMPTY,), "sample", "row", None, _nothing_to_clean,
         "neither turns nor images"),
    Rule((TEXT_EMPTY,), "text", "row", "check_text_empty", _empty_answers,
         "turns with an empty answer are dropped (counted in dropped_turns); rejected when none "
         "remain"),
    Rule((GUI_ACTION_UNPARSEABLE,), "text", "row", None, _gui_actions,
         "sources in gui_action_sources: every answer must parse as agent actions (checked "
         "again when coordinates are normalised with the first screenshot's size)"),
    Rule((TURN_TOO_LONG,), "text", "row", "check_turn_length", _long_turns,
         "FineVision: turns over max_turn_tokens are dropped; rejected when none remain"),
    Rule((PII_FOUND,), "text", "row", "check_pii", _pii,
         "personal data (emails, phones, IPs, Luhn-valid cards, IBANs, street addresses) in a "
         "source whose PII mode is drop (pii_mode, pii_source_modes); flag and redact keep the "
         "sample and list the types in pii_found, redact replaces each match by <TYPE>"),
    Rule((TEXT_UNSAFE,), "text", "row", "check_safety", _unsafe,
         "a configured unsafe term (whole words, any case)"),
    Rule((ALT_TEXT_SHORT,), "caption", "row", "check_alt_text", _alt_text,
         "LAION: caption under min_caption_chars characters"),
    Rule((CAPTION_WORD_COUNT,), "caption", "row", "check_caption_words", _caption_words,
         "DanQing: caption outside caption_min_words..caption_max_words words"),
    Rule((TEXT_UNK_TOKENS,), "text", "row", "check_unk_tokens", _unk_tokens,
         "DanQing: more than max_unk_tokens [UNK]-style junk tokens"),
    Rule((TEXT_SPECIAL_CHARS,), "text", "row", "check_special_chars", _special_chars,
         "DanQing information density: emoji / symbol / control share over "
         "max_special_char_ratio (GUI answers not counted)"),
    Rule((TEXT_REPETITIVE,), "text", "row", "check_repetition", _repetition,
         "word n-gram duplicate ratio of an answer over max_repetition_ratio"),
    Rule((LANGUAGE_NOT_ALLOWED,), "text", "row", "check_language", _language,
         "DanQing / LAION: lingua is confident the language is not in languages_allowed"),
    Rule((IMAGE_MISSING,), "image", "row", None, None,
         "an image entry without bytes"),
    Rule((IMAGE_FORMAT_NOT_ALLOWED,), "image", "header", None, None,
         "format (from the magic bytes and Pillow's header parse) not in allowed_formats"),
    Rule((DECOMPRESSION_BOMB,), "image", "header", None, None,
         "declared pixels over decompression_bomb_pixels, or the decoder ran out of memory"),
    Rule((TOO_MANY_PIXELS,), "image", "header", "check_max_pixels", _max_pixels,
         "LAION-5B: declared pixels over max_pixels"),
    Rule((IMAGE_CORRUPT, IMAGE_TRUNCATED), "image", "decoded", None, None,
         "the full decode of the first frame fails"),
    Rule((BLOCKLISTED_IMAGE,), "image", "decoded", "check_blocklist", _blocklisted_pixels,
         "safety: the sha256 of the decoded pixels is on a blocklist, or the phash is within "
         "blocklist_phash_distance bits of one (first of the decoded-image rules)"),
    Rule((IMAGE_TOO_SMALL_SIDE,), "web", "decoded", "check_min_side", _min_side,
         "DataComp: shorter side under min_side px (caption pairs by default: min_side_scope)"),
    Rule((ASPECT_RATIO,), "web", "decoded", "check_aspect_ratio", _aspect_ratio,
         "DataComp: longer / shorter side over max_aspect_ratio"),
    Rule((IMAGE_TOO_SMALL_BYTES,), "web", "decoded", "check_image_bytes", _image_bytes,
         "LAION: image file under min_image_bytes"),
    Rule((IMAGE_LOW_ENTROPY,), "image", "decoded", "check_entropy", _low_entropy,
         "DanQing information density: gray entropy under min_entropy_bits or gray std under "
         "min_gray_std"),
    Rule((IMAGE_BLURRY,), "image", "decoded", "check_blur", _blur,
         "DanQing visual fidelity: variance of the Laplacian under min_laplacian_var"),
    Rule((DOCUMENT_SEGMENTS_MISMATCH,), "text", "decoded", None, None,
         "interleaved documents: a rewritten text no longer splits into the document's "
         "paragraphs (segments would disagree with texts)"),
    Rule((IMAGE_DECODE_TIMEOUT,), "image", "pool", None, None,
         "an image's decode overran decode_timeout_s (its worker is killed)"),
    Rule((WORKER_CRASHED,), "sample", "pool", None, None,
         "a worker process died outside image decoding (e.g. the OOM killer)"),
)  # fmt: skip

REASONS: frozenset[str] = frozenset(code for rule in RULES for code in rule.codes)


def _checked(step: Step) -> tuple[Rule, ...]:
    return tuple(r for r in RULES if r.step == step and r.check is not None)


ROW_RULES = _checked("row")
HEADER_RULES = _checked("header")
DECODED_RULES = _checked("decoded")
# the switches the stage turns off for sources the web pair rules do not apply to
WEB_SWITCHES: tuple[str, ...] = tuple(
    r.enabled_by for r in RULES if r.scope == "web" and r.enabled_by is not None
)


def rules_for(code: str) -> tuple[Rule, ...]:
    """Every rule that may reject with ``code`` (KeyError for an unknown code)."""
    found = tuple(r for r in RULES if code in r.codes)
    if not found:
        raise KeyError(f"no cleaning rule rejects with {code!r}; known: {sorted(REASONS)}")
    return found


def row_reject(sample: Sample, params: CleanParams) -> Reject | None:
    """The row rules in table order on ``sample``; the first failure, or None."""
    for rule in ROW_RULES:
        if not rule.enabled(params):
            continue
        if rule.scope not in ("sample", "image") and not sample.has_text:
            continue  # an image-only sample has no text to judge
        if rule.scope == "caption" and not sample.pair:
            continue
        found = rule.check(sample, params)  # type: ignore[misc]
        if found:
            return found
    return None


def image_reject(rules: tuple[Rule, ...], image: ImageFacts, params: CleanParams) -> Reject | None:
    """``rules`` (one image step, in table order) on ``image``; the first failure, or None.

    The web scope is applied by the stage, which switches :data:`WEB_SWITCHES` off for sources
    the web pair rules do not cover."""
    for rule in rules:
        if rule.enabled(params):
            found = rule.check(image, params)  # type: ignore[misc]
            if found:
                return found
    return None


def rules_table() -> str:
    """The markdown table of :data:`RULES` (written into ``docs/cleaning-rules.md``)."""
    lines = [
        "| # | reject code | scope | runs on | switch | what is rejected |",
        "|---|---|---|---|---|---|",
    ]
    for number, rule in enumerate(RULES, 1):
        codes = ", ".join(f"`{code}`" for code in rule.codes)
        switch = f"`{rule.enabled_by}`" if rule.enabled_by else "always on"
        scope, step = SCOPE_TEXT[rule.scope], STEP_TEXT[rule.step]
        lines.append(f"| {number} | {codes} | {scope} | {step} | {switch} | {rule.what} |")
    return "\n".join(lines) + "\n"
