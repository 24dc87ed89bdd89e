"""Shared fixtures: generated images, an isolated FINEHARBOR_HOME per test, an S3-compatible
server (moto) on loopback for the object-storage tests, the small project the Dagster tests
share, a loopback OpenAI-compatible judge server, a tiny copy detector, one torch thread, a
one-node Ray cluster on loopback."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import fineharbor
from fineharbor.testing.images import make_image_bytes


@pytest.fixture
def image_bytes():
    return make_image_bytes


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private FINEHARBOR_HOME (and DAGSTER_HOME) so tests never touch the user's data."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("FINEHARBOR_HOME", str(root))
    monkeypatch.delenv("FINEHARBOR_STATE", raising=False)  # state = the home, as by default
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster"))
    (root / "dagster").mkdir()
    return root


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on a free loopback port for the whole session; its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A fresh bucket; the standard AWS_* variables point boto3, pyarrow and s3fs at it."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    name = f"fh-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    return name, client


@pytest.fixture
def ingest_project(tmp_path, home):
    """Two small sources and a missing one (:mod:`fineharbor_tests.defs.pipeline`)."""
    from fineharbor_tests.defs.pipeline import write_ingest_project

    return write_ingest_project(tmp_path, home)


@pytest.fixture
def project(ingest_project):
    """The project a Dagster test runs on: the ingest one unless its module overrides this."""
    return ingest_project


@pytest.fixture
def demo_hashes_config(tmp_path, monkeypatch):
    """The demo at scale 0.1 under ``tmp_path/demo_home``, and the project file's config with
    hash signals only (no copy detector, no CLIP): the Ray-vs-local tests' input."""
    from fineharbor.core.config import load_config
    from fineharbor.demo import generate_demo

    monkeypatch.setenv("FINEHARBOR_HOME", str(tmp_path / "demo_home"))
    generate_demo(tmp_path / "demo_home", "http://127.0.0.1:9", seed=0, scale=0.1)
    config = load_config(Path(fineharbor.__file__).resolve().parents[1] / "fineharbor.yaml")
    hashes_only = config.stages.signatures.model_copy(
        update={"sscd_path": None, "clip_model": None}
    )
    return config.model_copy(
        update={"stages": config.stages.model_copy(update={"signatures": hashes_only})}
    )


@pytest.fixture
def fake_server():
    """A loopback OpenAI-compatible chat server (:class:`fineharbor_tests.fake_llm.FakeServer`)."""
    from fineharbor_tests.fake_llm import running_fake_server

    with running_fake_server() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_sscd(tmp_path_factory) -> Path:
    """A TorchScript copy detector with random weights, saved as a user's SSCD file would be."""
    import torch

    from fineharbor_tests.core.signatures.conftest import TinyCopyNet, save_script

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sscd")
    return save_script(TinyCopyNet(), root / "tiny_sscd.torchscript.pt")


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """Tiny matmuls gain nothing from threads and lose much on a busy 2-core CI machine
    (measured here under load: 12.8 s with the default threads, 1.6 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def s3_keys(client, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under a prefix (directory markers ending in / left out)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return sorted(k for k in keys if not k.endswith("/"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_address():
    """A one-node Ray cluster on loopback for the session (two CPU slots, one logical GPU):
    `ray start --head --block` in its own process group, stopped by that group's id."""
    ray = pytest.importorskip("ray")
    port = _free_port()
    root = str(Path(fineharbor.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=1",  # a logical GPU: actors are scheduled on shares of it, torch uses CPU
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Ray head did not start") from None
                time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a graceful stop takes ~30 s on a busy machine
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
