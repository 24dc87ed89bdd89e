"""The demo's interleaved source: web documents (a title, then scene images each followed by the
paragraph that describes it) in OBELICS Parquet, with planted bad documents.

Bad documents are what UniFilter's classifier must rank low, not what a cleaning rule rejects:
``shuffled_image_positions`` (the images rotated by one position, so every paragraph describes
the image before another), ``boilerplate_text`` (the paragraphs replaced by web page chrome) and
``unrelated_images`` (the images replaced by scenes the paragraphs do not describe).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from fineharbor.core.pipeline import SCORED
from fineharbor.core.schema import make_sample_id
from fineharbor.testing.documents import document, write_obelics_parquet

SOURCE = "web_documents"
SHUFFLED = "shuffled_image_positions"
BOILERPLATE = "boilerplate_text"
UNRELATED = "unrelated_images"
DOCUMENT_DEFECTS = (SHUFFLED, BOILERPLATE, UNRELATED)
FILE_NAME = "documents-00000.parquet"

_TITLES = (
    "Notes from a walk through the old town",
    "What we saw at the weekend market",
    "A photo diary of the harbour festival",
    "Pictures from our trip to the coast",
    "Sketches of everyday scenes",
)
# Page chrome, drawn a few fragments per paragraph: two boilerplate documents share fragments,
# as real pages do, but not enough text to be near duplicates of each other.
_BOILERPLATE = (
    "Accept all cookies to continue.",
    "We use cookies to improve your experience on our site.",
    "Subscribe to our newsletter and never miss an update!",
    "Click here to sign up for free today.",
    "Share on Facebook, share on Twitter, or email this page to a friend.",
    "Print this page.",
    "Copyright 2024, all rights reserved.",
    "Terms of use and privacy policy apply.",
    "Contact us for advertising opportunities.",
    "Advertisement: continue reading below.",
    "Sponsored content from our partners.",
    "Log in or create an account to leave a comment.",
    "Back to top.",
    "Skip to main content.",
    "Read more stories like this in our archive.",
    "Follow us for the latest news and offers.",
)
_FRAGMENTS_PER_PARAGRAPH = 3


def _key(index: int) -> str:
    return f"doc-{index:05d}"


def build_documents(generator, count: int, rates: dict[str, float]) -> list[dict]:
    """``count`` OBELICS rows (``_defect`` names a planted defect, None for a good document).
    ``generator`` is the demo's record generator: its scenes and captions, its seeded rngs."""
    plan = generator.rng("documents", "plan")
    order = plan.permutation(count)
    defect_of: dict[int, str] = {}
    start = 0
    for defect in DOCUMENT_DEFECTS:
        n = max(1, round(rates[defect] * count))
        defect_of.update({int(i): defect for i in order[start : start + n]})
        start += n
    rows = []
    for index in range(count):
        rng = generator.rng("documents", index)
        defect = defect_of.get(index)
        visuals = [generator.clean_visual(rng, "scene") for _ in range(int(rng.integers(2, 4)))]
        images = [v.data for v in visuals]
        paragraphs = [generator.caption_for(v.content, rng) for v in visuals]
        if defect == SHUFFLED:
            images = images[1:] + images[:1]
        elif defect == UNRELATED:
            images = [generator.clean_visual(rng, "scene").data for _ in images]
        elif defect == BOILERPLATE:
            size = _FRAGMENTS_PER_PARAGRAPH
            picks = rng.choice(len(_BOILERPLATE), size=size * len(paragraphs), replace=False)
            paragraphs = [
                " ".join(_BOILERPLATE[int(i)] for i in picks[k : k + size])
                for k in range(0, len(picks), size)
            ]
        parts: list[bytes | str] = [f"{_TITLES[index % len(_TITLES)]}, part {index + 1}."]
        for image, text in zip(images, paragraphs, strict=True):
            parts += [image, text]
        row = document(_key(index), parts, {"url": f"https://demo.invalid/{_key(index)}"})
        rows.append({**row, "_defect": defect})
    return rows


def write_documents(root: Path, rows: list[dict]) -> None:
    write_obelics_parquet(
        root / FILE_NAME, [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    )


@dataclass(frozen=True)
class DocumentAuc:
    """ROC AUC of a score column: good documents above planted bad ones (1.0: all of them)."""

    column: str
    auc: float
    good: int
    bad: int


def planted_document_aucs(storage, truth_path: str | Path) -> list[DocumentAuc]:
    """From ``scored_samples`` of the demo's documents, per score column that is not null
    (``quality_score`` from the configured UniFilter classifier, ``clip_score``)."""
    from fineharbor.core.quality.metrics import roc_auc

    truth = pq.read_table(truth_path, columns=["source", "origin_key", "defect"]).to_pylist()
    bad = {
        make_sample_id(SOURCE, r["origin_key"])
        for r in truth
        if r["source"] == SOURCE and r["defect"] in DOCUMENT_DEFECTS
    }
    if not storage.has_partition(SCORED, SOURCE):
        return []
    results = []
    for column in ("quality_score", "clip_score"):
        # ids and a score scoring added: both stored in the stage itself, nothing to resolve
        table = storage.read_table(SCORED, SOURCE, columns=["sample_id", column])
        ids, values = table.column("sample_id").to_pylist(), table.column(column).to_pylist()
        scored = [(i, v) for i, v in zip(ids, values, strict=True) if v is not None]
        good = [v for i, v in scored if i not in bad]
        planted = [v for i, v in scored if i in bad]
        if good and planted:
            results.append(DocumentAuc(column, roc_auc(good, planted), len(good), len(planted)))
    return results
