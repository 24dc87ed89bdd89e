"""Fixtures of the end-to-end test: PostgreSQL, the demo sources and their HTTP server, and
dagster-webserver + dagster-daemon on a Postgres-backed instance. All module-scoped, all torn
down in finalizers (also when a test fails)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fineharbor.core.config import load_config
from fineharbor.demo import DemoSummary, generate_demo, serve_directory
from fineharbor_tests.e2e.services import (
    REQUIRED_ENV,
    DagsterStack,
    Postgres,
    find_chromium,
    find_postgres_bin,
    free_port,
    required,
)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
DEMO_SCALE = 0.05  # the minimum records per source: 12-30


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "e2e: end to end through real services (PostgreSQL, dagster-webserver, dagster-daemon, "
        "Chromium); deselect with -m 'not e2e'",
    )


def missing(reason: str) -> None:
    """Skip on a developer machine; fail where the e2e test is required (CI)."""
    if required():
        pytest.fail(f"{reason} ({REQUIRED_ENV} is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    (ARTIFACTS / "logs").mkdir(parents=True, exist_ok=True)
    for old in (ARTIFACTS / "logs").glob("*.log"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="module")
def postgres():
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        missing("PostgreSQL server binaries not found (apt-get install postgresql)")
    if importlib.util.find_spec("dagster_postgres") is None:
        missing("dagster-postgres is not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing("running as root without `runuser` to start PostgreSQL as another user")
    server = Postgres(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class Demo:
    home: Path
    summary: DemoSummary
    sources: list[str]
    config: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo sources at a small scale, with the URL-list source served on loopback."""
    home = tmp_path_factory.mktemp("e2e_home")
    port = free_port()
    summary = generate_demo(home, f"http://127.0.0.1:{port}", scale=DEMO_SCALE)
    # The demo config without its trained copy detector (training it is `fineharbor demo`'s
    # job; this test is about the services): hash signatures only.
    settings = yaml.safe_load((REPO / "fineharbor.yaml").read_text())
    settings["stages"].pop("signatures", None)
    config = home / "fineharbor.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    sources = load_config(config).source_names
    served = home / "demo" / "sources" / "laion_urls" / "_served"
    with serve_directory(served, port=port):
        yield Demo(home=home, summary=summary, sources=sources, config=config)


def instance_yaml(postgres: Postgres) -> dict:
    """docker/dagster.yaml (the production instance: queued runs, run limits, pools, retries,
    monitoring), pointed at the loopback PostgreSQL and sized for a 2-core machine."""
    instance = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    instance["storage"] = {"postgres": {"postgres_url": postgres.url}}
    coordinator = instance["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator", coordinator
    coordinator.setdefault("config", {})["dequeue_interval_seconds"] = 1
    # two runs at a time on two cores: a third only slows the other two down
    instance.setdefault("concurrency", {}).setdefault("runs", {})["max_concurrent_runs"] = 2
    instance["nux"] = {"enabled": False}  # no "join the community" dialog over the screenshot
    instance["telemetry"] = {"enabled": False}
    return instance


@pytest.fixture(scope="module")
def stack(postgres, demo, artifacts, tmp_path_factory):
    dagster_home = tmp_path_factory.mktemp("dagster_home")
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml(postgres)))
    env = {
        **os.environ,
        "FINEHARBOR_HOME": str(demo.home),
        "FINEHARBOR_CONFIG": str(demo.config),
        "DAGSTER_HOME": str(dagster_home),
        "PYTHONUNBUFFERED": "1",
    }
    services = DagsterStack(REPO, env, artifacts / "logs")
    try:
        services.start()
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None:
        missing("Chromium not found (apt-get install chromium)")
    return binary
