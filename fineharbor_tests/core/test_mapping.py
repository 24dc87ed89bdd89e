import json

import pyarrow as pa
import pytest

from fineharbor.core.config import MappingSpec
from fineharbor.core.mapping import map_batch
from fineharbor.core.schema import RAW_SCHEMA, make_sample_id

IMAGE = {"bytes": b"\xff\xd8fake", "path": "x.jpg"}


def raw(records, images=1):
    rows = [
        {
            "sample_id": make_sample_id("s", str(i)),
            "source": "s",
            "origin_uri": None,
            "origin_key": str(i),
            "record": json.dumps(record),
            "images": [IMAGE] * images,
        }
        for i, record in enumerate(records)
    ]
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def mapped(records, images=1, **spec):
    kept, rejected = map_batch(raw(records, images), MappingSpec(**spec))
    return kept.to_pylist(), rejected.to_pylist()


def test_llava_conversation_pairs_turns_and_strips_placeholders():
    record = {
        "conversations": [
            {"from": "system", "value": "be nice"},
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "A circle."},
            {"from": "human", "value": "Colour?"},
            {"from": "gpt", "value": "Red."},
        ]
    }
    kept, rejected = mapped([record], preset="llava")
    assert rejected == []
    assert kept[0]["texts"] == [
        {"user": "What is this?", "assistant": "A circle."},
        {"user": "Colour?", "assistant": "Red."},
    ]
    assert kept[0]["images"] == [IMAGE]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            {
                "conversations": [
                    {"from": "human", "value": "<image><image> q"},
                    {"from": "gpt", "value": "a"},
                ]
            },
            "image_placeholder_mismatch",
        ),
        ({"conversations": [{"from": "human", "value": "q"}]}, "unanswered_turn"),
        ({"conversations": [{"from": "alien", "value": "q"}]}, "unknown_role"),
        ({"conversations": "not a list"}, "unmappable_record"),
        ({"conversations": []}, "no_turns"),
        ({"other": 1}, "unmappable_record"),
    ],
)
def test_unmappable_records_are_rejected_with_reason(record, reason):
    kept, rejected = mapped([record], preset="llava")
    assert kept == []
    assert rejected[0]["reason"] == reason
    assert rejected[0]["origin_key"] == "0"


def test_caption_presets_try_known_fields_and_custom_paths():
    kept, _ = mapped([{"TEXT": "a blue square"}], preset="laion")
    assert kept[0]["texts"] == [{"user": "", "assistant": "a blue square"}]
    kept, _ = mapped([{"json": {"caption": "nested"}}], preset="webdataset_caption")
    assert kept[0]["texts"][0]["assistant"] == "nested"
    kept, _ = mapped(
        [{"meta": {"alt": ["first", "second"]}}],
        caption="meta.alt.1",
        user_prompt="Describe the image.",
    )
    assert kept[0]["texts"] == [{"user": "Describe the image.", "assistant": "second"}]


def test_question_answer_and_finevision_texts():
    kept, _ = mapped(
        [{"instruction": "Click Save", "action": "pyautogui.click(x=0.1, y=0.2)"}],
        question="instruction",
        answer="action",
    )
    assert kept[0]["texts"] == [
        {"user": "Click Save", "assistant": "pyautogui.click(x=0.1, y=0.2)"}
    ]
    kept, _ = mapped(
        [{"texts": [{"user": "q", "assistant": "a"}, {"user": "q2", "assistant": 7}]}],
        preset="finevision",
    )
    assert kept[0]["texts"][1] == {"user": "q2", "assistant": "7"}
    _, rejected = mapped([{"texts": [{"user": "q", "assistant": {"x": 1}}]}], preset="finevision")
    assert rejected[0]["reason"] == "unmappable_record"


def test_text_only_records_map_with_empty_images():
    kept, _ = mapped(
        [{"texts": [{"user": "2+2?", "assistant": "4"}]}], images=0, preset="finevision"
    )
    assert kept[0]["images"] == []


def test_image_only_mapping_gives_empty_texts():
    kept, rejected = mapped([{"file": "a.jpg"}, {"anything": [1, 2]}])
    assert rejected == []
    assert [k["texts"] for k in kept] == [[], []]
    assert kept[0]["images"] == [IMAGE]
    kept, _ = map_batch(raw([{"path": "a.jpg"}]), MappingSpec(images="path"))
    assert kept.column("texts").to_pylist() == [[]]


def test_an_image_without_its_caption_field_is_image_only_not_unmappable():
    kept, rejected = mapped([{"file": "a.jpg"}, {"file": "b.jpg", "txt": ""}], caption="txt")
    assert rejected == []
    assert kept[0]["texts"] == []
    # a caption that is there but empty stays a text: the cleaning stage's text rules judge it
    assert kept[1]["texts"] == [{"user": "", "assistant": ""}]
    kept, _ = mapped([{"file": "a.jpg"}], preset="webdataset_caption")
    assert kept[0]["texts"] == []
    # without an image there is nothing left to keep
    _, rejected = mapped([{"file": "a.jpg"}], images=0, caption="txt")
    assert rejected[0]["reason"] == "unmappable_record"


def test_a_record_shaped_against_every_rule_is_a_reject_not_a_crash():
    record = {"conversations": [{"from": ["human"], "value": "q"}, {"from": "gpt", "value": "a"}]}
    kept, rejected = mapped(
        [record, {"conversations": [{"from": {}, "value": "q"}]}], preset="llava"
    )
    assert kept == []
    assert {r["reason"] for r in rejected} <= {"unknown_role", "unmappable_record"}
    assert len(rejected) == 2


def test_image_only_sources_need_no_mapping_and_refuse_a_stray_user_prompt(tmp_path):
    from fineharbor.core.config import parse_config

    config = parse_config(
        {"sources": [{"name": "pool", "reader": "image_folder", "location": "."}]}, tmp_path
    )
    assert config.sources[0].mapping.image_only
    with pytest.raises(ValueError, match="no text rule"):
        MappingSpec(user_prompt="Describe the image.")


@pytest.mark.parametrize("mapping", [None, {"caption": "txt"}, {"preset": "webdataset_caption"}])
def test_captionless_image_folder_files_map_to_image_only_samples(tmp_path, mapping):
    from fineharbor.core.config import IngestParams, parse_config
    from fineharbor.core.readers import read_source
    from fineharbor_tests.conftest import make_image_bytes

    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.jpg").write_bytes(make_image_bytes(1))
    (tmp_path / "pool" / "a.txt").write_text("a red circle")
    (tmp_path / "pool" / "b.png").write_bytes(make_image_bytes(2, fmt="PNG"))
    block = {"name": "pool", "reader": "image_folder", "location": "pool"}
    source = parse_config(
        {"sources": [block | ({"mapping": mapping} if mapping else {})]}, tmp_path
    )
    source = source.sources[0]
    unified, rejected = [], []
    for raw_rows, read_rejects in read_source(source, IngestParams()):
        kept, unmapped = map_batch(raw_rows, source.mapping)
        unified += kept.to_pylist()
        rejected += read_rejects.to_pylist() + unmapped.to_pylist()
    assert rejected == []
    texts = {row["origin_key"]: row["texts"] for row in unified}
    assert texts["b.png"] == []
    expected = [] if mapping is None else [{"user": "", "assistant": "a red circle"}]
    assert texts["a.jpg"] == expected
