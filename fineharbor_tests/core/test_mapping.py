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
