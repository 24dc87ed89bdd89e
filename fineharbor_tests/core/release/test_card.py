"""The dataset card's tables hold data from the sources: every cell stays one plain cell."""

import pyarrow as pa

from fineharbor.core.pipeline import DECONTAMINATED, SCORED
from fineharbor.core.release.card import CardFacts, cell, render_card
from fineharbor.core.release.params import ReleaseRecipe

HOSTILE_NAME = "evil|source"
HOSTILE_LICENSE = "MIT\n| injected | row |\n<img src=https://tracker.example/x.png>"


def test_cell_escapes_pipes_newlines_html_and_links():
    assert cell("a|b") == r"a\|b"
    assert cell("one\ntwo\r\nthree\rfour") == "one two three four"
    assert cell("<script>x</script> & more") == "&lt;script&gt;x&lt;/script&gt; &amp; more"
    assert cell("![t](https://tracker.example/p.png)") == r"!\[t\](https://tracker.example/p.png)"
    assert cell(r"`code|` \|") == r"\`code\|\` \\\|"
    assert cell(0.1234567) == "0.123457" and cell(None) == "" and cell(42) == "42"


def _tables() -> dict[str, pa.Table]:
    composition = pa.Table.from_pylist(
        [
            {"source": HOSTILE_NAME, "license": HOSTILE_LICENSE, "samples": 3, "images": 3,
             "turns": 3, "share": 1.0},
            {"source": "*", "license": "", "samples": 3, "images": 3, "turns": 3, "share": 1.0},
        ]
    )  # fmt: skip
    rejects = pa.Table.from_pylist([{"reason": "source_cap", "samples": 2}])
    contamination = pa.Table.from_pylist(
        [
            {"source": HOSTILE_NAME, "benchmark": "bench<b>|x", "samples": 3, "images": 3,
             "samples_flagged": 0, "images_flagged": 0, "image_rate": 0.0, "sample_rate": 0.0},
        ]
    )  # fmt: skip
    ratings = pa.Table.from_pylist([], schema=pa.schema([("axis", pa.string())]))
    return {
        "release_composition": composition,
        "release_rejects": rejects,
        "contamination_report": contamination,
        "ratings_distribution": ratings,
    }


def test_card_tables_keep_their_shape_with_hostile_source_names_and_licenses():
    recipe = ReleaseRecipe(sources=[{"name": "a|b", "cap": 5}])
    card = render_card(recipe, _tables(), CardFacts(DECONTAMINATED, [], None, "", []))
    body = card.split("\n---\n", 1)[1]
    assert "<img" not in body and "<b>" not in body and "| injected | row |" not in body
    columns = None  # every row of a table has its header's number of cells
    for line in body.splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        cells = line.replace("\\|", "").count("|")
        columns = columns or cells
        assert cells == columns, line
    assert r"evil\|source" in body and r"MIT \| injected \| row \| &lt;img" in body
    assert r"| source cap | a\|b: 5 | `source_cap` | 2 |" in body


def test_interleaved_sources_get_their_own_config_outside_default():
    import yaml

    facts = CardFacts(SCORED, ["captions", "docs"], None, "", [], interleaved=["docs"])
    card = render_card(ReleaseRecipe(), _tables(), facts)
    configs = {c["config_name"]: c for c in yaml.safe_load(card.split("---\n")[1])["configs"]}
    assert configs["default"]["data_files"][0]["path"] == ["data/captions/train-*.parquet"]
    assert configs["docs"]["data_files"][0]["path"] == "data/docs/train-*.parquet"
