"""Real services for the end-to-end test: a throwaway PostgreSQL, dagster-webserver and
dagster-daemon as subprocesses, a small GraphQL client and headless Chromium.

Every wait here has a deadline, and every process runs in its own process group, so the code
servers and run workers it spawns are stopped with it (also after a test failed).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")

# Set by .ci/run: there a missing binary or package fails the e2e test instead of skipping it.
REQUIRED_ENV = "FINEHARBOR_E2E_REQUIRED"


def required() -> bool:
    return os.environ.get(REQUIRED_ENV, "").lower() not in ("", "0", "false", "no")


class ServiceDied(AssertionError):
    """Raised by a wait probe when the process it waits on has exited: waiting on is pointless."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    diagnostics: Callable[[], str] = lambda: "",
) -> T:
    """Call ``probe`` until it returns something truthy; fail with ``diagnostics`` at timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except ServiceDied:
            raise
        except Exception as error:  # a probe may fail while a service is still starting
            last_error = error
        if time.monotonic() >= deadline:
            detail = f"\nlast error: {last_error!r}" if last_error else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}{detail}\n{diagnostics()}"
            )
        time.sleep(interval)


def tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- PostgreSQL


def find_postgres_bin() -> Path | None:
    """Debian's server binaries (/usr/lib/postgresql/<ver>/bin, newest first), else $PATH."""
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    candidates = [os.environ.get("FINEHARBOR_PG_BIN", ""), *debian]
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for candidate in filter(None, candidates):
        directory = Path(candidate)
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "createdb")):
            return directory
    return None


def server_user() -> str | None:
    """initdb and postgres refuse to run as root; as root, run them as `postgres` or `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and there is neither a `postgres` nor a `nobody` user")


class Postgres:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only."""

    user_name = "dagster"
    db_name = "fineharbor_e2e"

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.run_as = server_user()
        # Not under pytest's tmp_path, which is private to the test user (0700): the server
        # user must reach its data directory. A short path also keeps the socket under 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="fh-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.sockets.mkdir()
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user_name}@127.0.0.1:{self.port}/{self.db_name}"

    def _run(self, tool: str, *args: str, timeout: float = 90) -> None:
        argv = [str(self.bin_dir / tool), *args]
        if self.run_as:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n"
                f"{result.stderr}\n--- server log ---\n{tail(self.log)}"
            )

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user_name, "--auth=trust",
                  "--encoding=UTF8", "--no-sync")  # fmt: skip
        options = [
            f"-p {self.port}",
            "-h 127.0.0.1",
            f"-k {self.sockets}",
            "-c max_connections=200",
            # throwaway data: durability buys nothing here
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
        ]
        self.started = True
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", " ".join(options))  # fmt: skip
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user_name,
                  self.db_name)  # fmt: skip

    def stop(self) -> None:
        try:
            if self.started and (self.data / "postmaster.pid").exists():
                try:
                    self._run(
                        "pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30"
                    )
                except Exception:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(Exception):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- processes


def venv_script(name: str) -> str:
    """A console script next to the running interpreter (the venv), else on $PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is neither next to {sys.executable} nor on PATH")
    return found


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_groups(groups: Sequence[int], grace: float = 5) -> None:
    """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds."""
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.2)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


class Service:
    """A long-running command in its own process group, logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict, cwd: Path, logs: Path):
        self.name, self.argv, self.env, self.cwd = name, list(argv), env, cwd
        self.log = logs / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.groups: list[int] = []  # every group ever started: a restart's orphans stop too
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "a") as handle:
            handle.write(f"\n===== start #{self.starts}: {' '.join(self.argv)}\n")
            handle.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.groups.append(self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_leader(self) -> None:
        """SIGKILL the main process only, as when a daemon container dies: no cleanup runs.

        What it spawned (its code server, and the runs that server executes) lives on, as in
        the compose deployment, where runs execute in the code-server container.
        """
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def diagnostics(self) -> str:
        if self.process is None:
            state = "never started"
        else:
            state = "running" if self.alive else f"exited {self.process.returncode}"
        return f"--- {self.name} ({state}), end of {self.log} ---\n{tail(self.log)}"


# --------------------------------------------------------------------------- GraphQL


class GraphQL:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()

    def __call__(self, query: str, timeout: float = 60, **variables: Any) -> dict:
        response = self.session.post(
            f"{self.base_url}/graphql",
            json={"query": query, "variables": variables},
            timeout=timeout,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]


# --------------------------------------------------------------------------- the Dagster stack

WORKSPACE_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

DAEMON_QUERY = """{ instance { daemonHealth { allDaemonStatuses {
  daemonType required healthy lastHeartbeatTime } } } }"""


class DagsterStack:
    """dagster-webserver and dagster-daemon on one DAGSTER_HOME, loading ``workspace.yaml``."""

    def __init__(self, repo: Path, env: dict, logs: Path, daemon_interval_s: int = 5) -> None:
        self.repo = repo
        self.env = env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.graphql = GraphQL(self.base_url)
        self.location = ""
        workspace = str(repo / "workspace.yaml")
        self.webserver = Service(
            "webserver",
            [venv_script("dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port),
             "-w", workspace],
            env=env, cwd=repo, logs=logs,
        )  # fmt: skip
        # The stock daemon CLI, with a shorter backfill loop (see daemon_main.py).
        self.daemon = Service(
            "daemon",
            [sys.executable, "-m", "fineharbor_tests.e2e.daemon_main", str(daemon_interval_s),
             "run", "-w", workspace],
            env=env, cwd=repo, logs=logs,
        )  # fmt: skip

    def diagnostics(self) -> str:
        return f"{self.webserver.diagnostics()}\n{self.daemon.diagnostics()}"

    def instance(self):
        """The instance the services share, opened in this process (reads PostgreSQL)."""
        from dagster import DagsterInstance
        from dagster._core.instance.ref import InstanceRef

        return DagsterInstance.from_ref(InstanceRef.from_dir(self.env["DAGSTER_HOME"]))

    def start(self, timeout: float = 120) -> None:
        self.webserver.start()
        self.daemon.start()
        self.wait_for_webserver(timeout)
        self.wait_for_daemon(timeout)

    def stop(self) -> None:
        stop_groups([*self.daemon.groups, *self.webserver.groups])

    def _check_alive(self, service: Service) -> None:
        if not service.alive:
            raise ServiceDied(f"{service.name} exited early\n{self.diagnostics()}")

    def wait_for_webserver(self, timeout: float) -> None:
        def ready() -> bool:
            self._check_alive(self.webserver)
            return requests.get(f"{self.base_url}/server_info", timeout=5).ok

        wait_for(
            ready, timeout=timeout, what="webserver /server_info", diagnostics=self.diagnostics
        )
        self.location = wait_for(
            self._loaded_location,
            timeout=timeout,
            what="the code location to load",
            diagnostics=self.diagnostics,
        )

    def _loaded_location(self) -> str | None:
        self._check_alive(self.webserver)
        for entry in self.graphql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]:
            loaded = entry["locationOrLoadError"]
            if loaded and loaded["__typename"] == "PythonError":
                raise ServiceDied(f"code location {entry['name']} failed: {loaded['message']}")
            if entry["loadStatus"] == "LOADED" and loaded:
                return entry["name"]
        return None

    def daemon_heartbeats(self) -> dict[str, float]:
        """Last heartbeat of each required daemon that reports healthy."""
        statuses = self.graphql(DAEMON_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
        return {
            s["daemonType"]: s["lastHeartbeatTime"] or 0.0
            for s in statuses
            if s["required"] and s["healthy"]
        }

    def wait_for_daemon(self, timeout: float, since: float = 0.0) -> None:
        """Until the daemons that run backfills and queued runs beat (after ``since``)."""

        def healthy() -> bool:
            self._check_alive(self.daemon)
            beats = self.daemon_heartbeats()
            return all(beats.get(d, 0.0) > since for d in ("BACKFILL", "QUEUED_RUN_COORDINATOR"))

        wait_for(
            healthy,
            timeout=timeout,
            what="daemon heartbeats (BACKFILL, QUEUED_RUN_COORDINATOR)",
            interval=1,
            diagnostics=self.diagnostics,
        )


# --------------------------------------------------------------------------- Chromium


def find_chromium() -> str | None:
    for candidate in (
        os.environ.get("FINEHARBOR_CHROMIUM", ""),
        "/usr/bin/chromium",
        shutil.which("chromium") or "",
        shutil.which("chromium-browser") or "",
        shutil.which("google-chrome") or "",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def chromium(
    binary: str,
    url: str,
    profile: Path,
    *extra: str,
    window: int = 1600,
    budget_ms: int = 20000,
    timeout: float = 90,
) -> str:
    """One headless Chromium run (``--dump-dom`` or ``--screenshot=PATH``); returns stdout."""
    argv = [
        binary,
        "--headless",
        "--no-sandbox",  # root in CI, and containers without user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={window},{window}",
        f"--virtual-time-budget={budget_ms}",
        *extra,
        url,
    ]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_groups([process.pid], grace=2)
        process.communicate()
        raise AssertionError(f"chromium did not finish within {timeout:.0f}s: {url}") from None
    finally:
        stop_groups([process.pid], grace=2)  # renderer/zygote leftovers
    if process.returncode != 0:
        raise AssertionError(f"chromium exited {process.returncode} on {url}:\n{stderr[-3000:]}")
    return stdout
