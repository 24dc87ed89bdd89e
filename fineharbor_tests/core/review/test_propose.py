"""Assisted mapping: each demo format gets the mapping a person wrote for it, a proposal maps
records through the real reader and mapping code, the LLM path works through a loopback
OpenAI-compatible server, and `map-source --write` leaves a project file that loads."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from aiohttp import web

from fineharbor.cli import main
from fineharbor.core.config import load_config
from fineharbor.core.judge import CallableBackend, JudgeParams
from fineharbor.core.mapping import map_batch
from fineharbor.core.review.propose import (
    ProposalError,
    proposal_backend,
    propose_source,
    sample_raw,
)
from fineharbor.demo import SOURCES, generate_demo

PROJECT_FILE = Path(__file__).resolve().parents[3] / "fineharbor.yaml"

# What the heuristics must propose for each demo format (the demo config's hand-written
# mappings, up to equivalent spellings: cauldron = finevision, images defaults of the readers).
EXPECTED = {
    "cauldron_charts": ("hf_parquet", {"preset": "finevision"}),
    "llava_scenes": ("json", {"preset": "llava", "origin_key": "id"}),
    "wds_captions": ("webdataset", {"preset": "webdataset_caption"}),
    "laion_urls": ("url_list", {"caption": "caption", "origin_key": "key"}),
    "folder_captions": ("image_folder", {"caption": "txt"}),
    "gui_aguvis": ("json", {"question": "instruction", "answer": "action", "origin_key": "id"}),
    "gui_android": (
        "hf_parquet",
        {"question": "goal", "answer": "action", "origin_key": "step_id"},
    ),
    "bench_vqa": ("hf_parquet", {"preset": "finevision"}),
    "web_documents": ("interleaved", {"preset": "interleaved", "origin_key": "id"}),
}


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    home = tmp_path_factory.mktemp("review_demo")
    generate_demo(home, "http://127.0.0.1:9", seed=0, scale=0.1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINEHARBOR_HOME", str(home))
        return load_config(PROJECT_FILE)


def _unified(source) -> list[tuple]:
    raw, _ = sample_raw(source, 16)
    kept, _ = map_batch(raw, source.mapping)
    return [
        (row["sample_id"], len(row["images"]), json.dumps(row["texts"])) for row in kept.to_pylist()
    ]


@pytest.mark.parametrize("name", SOURCES)
def test_heuristics_propose_each_demo_format(demo_config, name):
    configured = demo_config.source(name)
    proposal = propose_source(configured.location, name=name)
    reader, mapping = EXPECTED[name]
    assert proposal.method == "heuristics"
    assert proposal.block["reader"] == reader == configured.reader
    assert proposal.block["mapping"] == mapping
    assert proposal.dry_run.mapped > 0 and proposal.dry_run.examples
    assert any("heuristics:" in line for line in proposal.evidence)
    # Applied through the real reader and mapping: the same unified rows as the person's config.
    proposed = _unified(proposal.source())
    assert proposed and proposed == _unified(configured)


def test_unknown_location_is_a_clear_error(tmp_path):
    with pytest.raises(ProposalError, match="does not exist"):
        propose_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("hi")
    with pytest.raises(ProposalError, match="no Parquet, JSON, tar"):
        propose_source(tmp_path / "empty")


# --------------------------------------------------------------------------- LLM

LLM_MAPPING = {"question": "complaint", "answer": "finding", "origin_key": "case"}


def _write_jsonl(root: Path, image_bytes, record) -> Path:
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(6):
        (root / "img" / f"{i}.jpg").write_bytes(image_bytes(i))
        lines.append(json.dumps({"case": f"c{i}", "image": f"img/{i}.jpg", **record(i)}))
    (root / "cases.jsonl").write_text("\n".join(lines) + "\n")
    return root / "cases.jsonl"


def _clinic(tmp_path: Path, image_bytes) -> Path:
    """A chat source with speakers no list knows and an unusual content key."""

    def record(i: int) -> dict:
        return {
            "dialog": [
                {"speaker": "patient", "utterance": f"<image>\nWhat is shown in scan {i}?"},
                {"speaker": "doctor", "utterance": f"Scan {i} shows a round shape."},
            ]
        }

    return _write_jsonl(tmp_path / "clinic", image_bytes, record)


def _intake(tmp_path: Path, image_bytes) -> Path:
    """Question/answer fields no heuristic knows: the heuristics can only guess a caption."""

    def record(i: int) -> dict:
        return {"complaint": f"What is wrong in scan {i}?", "finding": f"A shadow, case {i}."}

    return _write_jsonl(tmp_path / "intake", image_bytes, record)


def test_chat_roles_inferred_from_order(tmp_path, image_bytes):
    proposal = propose_source(_clinic(tmp_path, image_bytes), name="clinic")
    assert proposal.block["mapping"] == {
        "conversations": "dialog",
        "role_field": "speaker",
        "content_field": "utterance",
        "user_roles": ["human", "patient", "user"],
        "assistant_roles": ["assistant", "bot", "doctor", "gpt"],
    }  # "case" is unique but not named like an id: no origin_key guessed
    assert proposal.dry_run.mapped == proposal.dry_run.total == 6
    assert proposal.dry_run.examples[0][0] == {
        "user": "What is shown in scan 0?",  # the <image> placeholder is stripped
        "assistant": "Scan 0 shows a round shape.",
    }
    assert any("'patient' asks" in line for line in proposal.evidence)


@pytest.fixture
def stub_llm():
    """A loopback OpenAI-compatible chat endpoint replying with a mapping in prose."""
    bodies: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        reply = f"Here is the mapping:\n```json\n{json.dumps(LLM_MAPPING)}\n```"
        payload = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
        return web.json_response(payload)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    ready = threading.Event()
    url: list[str] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        url.append(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield url[0], bodies
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_llm_proposal_through_openai_compatible_server(tmp_path, image_bytes, stub_llm):
    url, bodies = stub_llm
    path = _intake(tmp_path, image_bytes)
    backend = proposal_backend(JudgeParams(backend="openai", base_url=url, text_model="mapper"))
    proposal = propose_source(path, name="intake", backend=backend)
    assert proposal.method == "llm"
    assert proposal.block["mapping"] == LLM_MAPPING
    assert proposal.dry_run.mapped == proposal.dry_run.total == 6
    assert proposal.dry_run.examples[0][0] == {
        "user": "What is wrong in scan 0?",
        "assistant": "A shadow, case 0.",
    }
    # the heuristics could only guess, and say so
    assert any(line.startswith("no known text field") for line in proposal.evidence)
    # one request: the model, a reply budget for JSON, and the fields it should map
    assert len(bodies) == 1 and bodies[0]["model"] == "mapper"
    assert bodies[0]["max_tokens"] == 512
    assert "complaint" in bodies[0]["messages"][1]["content"]


@pytest.mark.parametrize(
    "reply", [None, "no idea", '{"question": "x"}', json.dumps({"caption": "nope.field"})]
)
def test_unusable_llm_replies_keep_the_heuristics(tmp_path, image_bytes, reply):
    backend = CallableBackend("stub", lambda request: reply)
    proposal = propose_source(_intake(tmp_path, image_bytes), name="intake", backend=backend)
    assert proposal.method == "heuristics" and backend.requests == 1
    assert proposal.block["mapping"]["caption"] in ("complaint", "finding")


def test_llm_needs_a_configured_judge():
    with pytest.raises(ProposalError, match=r"stages\.judge\.backend"):
        proposal_backend(JudgeParams())


# --------------------------------------------------------------------------- CLI


def test_map_source_writes_a_block_that_loads(tmp_path, home, image_bytes, capsys):
    config = tmp_path / "fineharbor.yaml"
    config.write_text(
        "# my project\nsources:\n- name: old  # keep me\n  reader: image_folder\n"
        "  location: old\n  mapping: {caption: txt}\n\n# stage settings\nstages: {}\n"
    )
    path = _clinic(tmp_path, image_bytes)
    folder = tmp_path / "old"
    folder.mkdir()
    assert main(["--config", str(config), "map-source", str(path)]) == 0
    out = capsys.readouterr().out
    assert "conversations: dialog" in out and "not written" in out
    assert load_config(config).source_names == ["old"]

    assert main(["--config", str(config), "map-source", str(path), "--write"]) == 0
    text = config.read_text()
    assert "# keep me" in text and "# stage settings" in text and "# proposed by" in text
    loaded = load_config(config)
    assert loaded.source_names == ["old", "clinic"]
    added = loaded.source("clinic")
    assert added.reader == "json" and added.location == str(path)
    assert added.mapping.conversations == "dialog"
    assert "\n- name: clinic\n  reader: json\n" in text  # indented like the file's items
    assert "location: clinic/cases.jsonl" in text  # relative to the project file

    assert main(["--config", str(config), "map-source", str(path), "--write"]) == 2
    assert "exists; pass --name" in capsys.readouterr().err
