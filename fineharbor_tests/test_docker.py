"""Static checks of docker/: no Docker engine runs in CI, so the compose file, the Dockerfiles
and the production instance are checked for consistency with each other and with the repo."""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
INSTANCE = DOCKER / "dagster.yaml"
DAGSTER_SERVICES = ("code", "webserver", "daemon")  # the services that run the fineharbor image


# --------------------------------------------------------------------------- parsing


@dataclass
class Dockerfile:
    path: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    # (sources, destination); a destination directory ends with "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for line in filter(str.strip, logical):
        keyword, _, rest = line.strip().partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _expand(value: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        return env.get(match.group(1) or match.group(2), match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, value).replace('"', "")


def _words(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def parse_dockerfile(path: Path) -> Dockerfile:
    parsed = Dockerfile(path)
    for keyword, arguments in _instructions(path.read_text()):
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                parsed.env[name] = _expand(value, parsed.env)
        elif keyword == "WORKDIR":
            parsed.workdir = str(Path(parsed.workdir) / _expand(arguments, parsed.env))
        elif keyword in ("COPY", "ADD"):
            words = [w for w in _words(arguments) if not w.startswith("--")]
            if any(w.startswith("--from") for w in _words(arguments)):
                continue  # multi-stage copies come from an image, not the build context
            *sources, destination = words
            destination = _expand(destination, parsed.env)
            is_dir = destination.endswith(("/", "/.")) or destination == "." or len(sources) > 1
            if not destination.startswith("/"):
                destination = str(Path(parsed.workdir) / destination)
            parsed.copies.append((sources, destination.rstrip("/") + ("/" if is_dir else "")))
        elif keyword == "CMD":
            parsed.cmd = _words(arguments)
    return parsed


def copied_to(dockerfile: Dockerfile, source: str) -> str | None:
    """Absolute path in the image of the repo file ``source`` (relative to the build context)."""
    for sources, destination in dockerfile.copies:
        if source in sources:
            if destination.endswith("/"):
                return str(Path(destination) / Path(source).name)
            return destination
    return None


def option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def env_references(node: object) -> set[str]:
    """Every `{env: NAME}` in a Dagster instance yaml."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_references(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(env_references(v) for v in node))
    return set()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def image(services) -> Dockerfile:
    """The Dockerfile the `code` service builds (and the webserver and daemon reuse)."""
    build = services["code"]["build"]
    context = (DOCKER / build.get("context", ".")).resolve()
    assert context == REPO, f"the build context should be the repo root, not {context}"
    return parse_dockerfile(context / build.get("dockerfile", "Dockerfile"))


# --------------------------------------------------------------------------- tests


def test_compose_has_postgres_code_webserver_and_daemon(services):
    assert {"postgres", *DAGSTER_SERVICES} <= set(services)
    # one image for the three Dagster services: the code service builds it, the others reuse it
    tag = services["code"]["image"]
    assert all(services[s]["image"] == tag for s in DAGSTER_SERVICES)
    assert all("depends_on" in services[s] for s in DAGSTER_SERVICES)


def test_every_dockerfile_copies_only_files_that_exist():
    dockerfiles = sorted(DOCKER.glob("Dockerfile*"))
    assert {p.name for p in dockerfiles} >= {"Dockerfile", "Dockerfile.cuda"}
    for path in dockerfiles:
        parsed = parse_dockerfile(path)
        assert parsed.copies, f"{path.name} copies nothing"
        for sources, _ in parsed.copies:
            for source in sources:
                assert glob.glob(str(REPO / source)), f"{path.name}: COPY {source}: not in the repo"
        assert parsed.cmd[:3] == ["dagster", "code-server", "start"], (path.name, parsed.cmd)
        assert option(parsed.cmd, "-m") == "fineharbor.definitions", (path.name, parsed.cmd)


def test_webserver_and_daemon_load_the_workspace_the_image_holds(services, image):
    in_image = copied_to(image, "docker/workspace.yaml")
    assert in_image, "the Dockerfile does not copy docker/workspace.yaml"
    assert option(services["webserver"]["command"], "-w") == in_image
    assert option(services["daemon"]["command"], "-w") == in_image
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    # the instance sits in DAGSTER_HOME, where Dagster looks for it
    assert copied_to(image, "docker/dagster.yaml") == f"{image.env['DAGSTER_HOME']}/dagster.yaml"


def test_workspace_points_at_the_code_server(services):
    code = services["code"]["command"]
    assert code[:3] == ["dagster", "code-server", "start"], code
    assert option(code, "-m") == "fineharbor.definitions"
    assert importlib.util.find_spec("fineharbor.definitions") is not None
    (location,) = yaml.safe_load((DOCKER / "workspace.yaml").read_text())["load_from"]
    server = location["grpc_server"]
    assert server["host"] == "code", "the workspace must reach the `code` service by its name"
    assert int(server["port"]) == int(option(code, "-p"))
    assert option(code, "-h") == "0.0.0.0", "the code server must listen beyond its container"


def test_instance_environment_is_set_for_every_dagster_service(services):
    names = env_references(yaml.safe_load(INSTANCE.read_text()))
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_DB"} <= names
    for service in DAGSTER_SERVICES:
        environment = services[service].get("environment") or {}
        unset = sorted(names - set(environment))
        assert not unset, f"{service}: {unset} used by docker/dagster.yaml but not set"
    env = services["webserver"]["environment"]
    postgres = services["postgres"]["environment"]
    assert env["DAGSTER_PG_HOST"] == "postgres"
    assert env["DAGSTER_PG_USER"] == postgres["POSTGRES_USER"]
    assert env["DAGSTER_PG_PASSWORD"] == postgres["POSTGRES_PASSWORD"]
    assert env["DAGSTER_PG_DB"] == postgres["POSTGRES_DB"]


def test_fineharbor_paths_in_compose_exist_in_the_image(services, image):
    for service in DAGSTER_SERVICES:
        env = services[service]["environment"]
        assert env["FINEHARBOR_CONFIG"] == copied_to(image, "fineharbor.yaml"), service
        mounts = [v.split(":")[1] for v in services[service].get("volumes", [])]
        assert any(env["FINEHARBOR_HOME"].startswith(m) for m in mounts), (
            f"{service}: FINEHARBOR_HOME {env['FINEHARBOR_HOME']} is on no volume {mounts}"
        )


def test_production_instance_is_a_valid_dagster_instance(services, tmp_path, monkeypatch):
    """docker/dagster.yaml, with the compose environment, through Dagster's own loader, and
    every configurable class it names validated against that class's config schema."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.ref import InstanceRef
    from dagster_postgres.utils import pg_url_from_config
    from sqlalchemy.engine import make_url

    for name, value in services["webserver"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    (tmp_path / "dagster.yaml").write_text(INSTANCE.read_text())
    ref = InstanceRef.from_dir(str(tmp_path))  # validates against the instance schema

    for name in ref._fields:
        data = getattr(ref, name)
        if not hasattr(data, "module_name"):
            continue
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
        assert result.success, f"{name} ({data.class_name}): {result.errors}"

    assert ref.storage_data.class_name == "DagsterPostgresStorage"
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    storage_type = resolve_to_config_type(
        importlib.import_module("dagster_postgres").DagsterPostgresStorage.config_type()
    )
    url = pg_url_from_config(process_config(storage_type, ref.storage_data.config_dict).value)
    try:  # the SQLAlchemy driver the URL's scheme selects must be installed
        make_url(url).get_dialect().import_dbapi()
    except ImportError as error:
        pytest.fail(f"docker/dagster.yaml connects with {url.split('://')[0]}:// ({error})")
    settings = ref.settings
    assert settings["concurrency"]["runs"]["max_concurrent_runs"] > 0


def _merged(base: dict, override: dict) -> dict:
    """Compose's merge of an override file: mappings merge key by key, other values replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merged(base[key], value)
        else:
            merged[key] = value
    return merged


def test_gpu_override_runs_the_code_location_on_the_cuda_image_with_a_gpu(compose):
    override = yaml.safe_load((DOCKER / "docker-compose.gpu.yml").read_text())
    services = _merged(compose, override)["services"]
    code = services["code"]
    assert code["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    (device,) = code["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # the image the code service builds is the one the webserver and daemon run
    assert {services[s]["image"] for s in DAGSTER_SERVICES} == {code["image"]}
    cpu, cuda = (parse_dockerfile(DOCKER / n) for n in ("Dockerfile", "Dockerfile.cuda"))
    assert sorted(map(str, cuda.copies)) == sorted(map(str, cpu.copies))


def test_gpu_pool_steps_request_a_gpu_on_kubernetes():
    import dagster as dg

    from fineharbor.core.pipeline import STAGES
    from fineharbor.definitions import defs

    graph = defs.resolve_asset_graph()
    for spec in STAGES:
        node = graph.get(dg.AssetKey(spec.name))
        k8s = (node.assets_def.op.tags or {}).get("dagster-k8s/config")
        if spec.pool == "gpu":
            limits = json.loads(k8s)["container_config"]["resources"]["limits"]
            assert limits == {"nvidia.com/gpu": "1"}, spec.name
        else:
            assert k8s is None, spec.name
