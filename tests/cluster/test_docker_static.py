"""docker/: checked statically, since no Docker engine runs here.

Every file the images copy exists, the entrypoint and its verb exist, the compose files
parse and name existing files, configs and job modules, and the lock file agrees with
pyproject.toml (exact pins equal, ranges satisfied, every pin hashed).
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import typer
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from adaptor.cli import app
from adaptor.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
LOCK = DOCKER / "requirements.lock"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
COMPOSE = [DOCKER / "compose.yaml", DOCKER / "compose.gpu.yaml"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1].strip()) for s in joined]


def _interpolate(text: str, defaults: dict[str, str]) -> str:
    """``${NAME:-default}`` / ``${NAME}`` as an unset environment would give them."""

    def value(match: re.Match) -> str:
        name, _, default = match.group(1).partition(":-")
        return defaults.get(name, default)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def _lock() -> dict[str, tuple[Version, list[str]]]:
    """Locked name → (version, hashes)."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            name = canonicalize_name(m.group(1))
            pins[name] = (Version(m.group(2)), [])
        elif name and (h := re.search(r"--hash=(sha256:[0-9a-f]{64})", line)):
            pins[name][1].append(h.group(1))
    return pins


def _verbs() -> set[str]:
    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_files_and_runs_adaptor(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    args = {k: v for kind, a in steps if kind == "ARG" and "=" in a for k, v in [a.split("=", 1)]}
    base = _interpolate(next(a for kind, a in steps if kind == "FROM"), args)
    _, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base {base}"

    copies = [shlex.split(a) for kind, a in steps if kind == "COPY"]
    for words in copies:
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, words
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"
    runs = " ".join(a for kind, a in steps if kind == "RUN")
    assert "--require-hashes -r docker/requirements.lock" in runs
    assert "pip install --no-deps --no-build-isolation ." in runs  # the project: no other deps
    users = [a for kind, a in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"

    entrypoint = next(yaml.safe_load(a) for kind, a in steps if kind == "ENTRYPOINT")
    assert entrypoint == ["adaptor"] and "adaptor" in PYPROJECT["project"]["scripts"]
    cmd = next(yaml.safe_load(a) for kind, a in steps if kind == "CMD")
    assert cmd[0] in _verbs(), f"CMD verb {cmd[0]!r} is not an adaptor command"


def test_base_python_matches_the_lock_and_pyproject() -> None:
    header = LOCK.read_text().splitlines()[:3]
    locked_python = re.search(r"--python-version (\S+)", " ".join(header)).group(1)
    assert "--generate-hashes" in " ".join(header)
    steps = _instructions(DOCKER / "Dockerfile")
    base = next(a.split("=", 1)[1] for kind, a in steps if kind == "ARG" and "BASE_IMAGE" in a)
    python = Version(re.match(r"python:(\d+\.\d+\.\d+)", base).group(1))
    assert f"{python.major}.{python.minor}" == locked_python
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])
    cuda = next(a for kind, a in _instructions(DOCKER / "Dockerfile.cuda") if kind == "ARG")
    assert f"py{locked_python.replace('.', '')}" in cuda  # the Ray image of the same Python
    ray_pin = _lock()["ray"][0]
    assert f":{ray_pin}-" in cuda  # and of the locked Ray


def test_lock_agrees_with_pyproject() -> None:
    pins = _lock()
    wanted = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    wanted += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK.name}"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{req}: locked {version}"
        exact = [s for s in req.specifier if s.operator == "=="]
        if exact:
            assert version == Version(exact[0].version)
    assert all(hashes for _, hashes in pins.values()), "every pin needs --hash lines"


def test_lock_holds_what_the_requested_extras_need() -> None:
    pins = _lock()
    checked = 0
    for text in PYPROJECT["project"]["dependencies"]:
        req = Requirement(text)
        if not req.extras:
            continue
        locked = pins[canonicalize_name(req.name)][0]
        if Version(importlib.metadata.version(req.name)) != locked:
            continue  # its metadata here is of another version; nothing to compare against
        for dep in map(Requirement, importlib.metadata.requires(req.name) or []):
            needed = dep.marker is not None and any(
                dep.marker.evaluate({**default_environment(), "extra": extra})
                for extra in req.extras
            )
            if needed and not dep.marker.evaluate({**default_environment(), "extra": ""}):
                assert canonicalize_name(dep.name) in pins, f"{req} needs {dep}"
                checked += 1
    assert checked > 5  # ray[default,train] brings the dashboard and job-submission packages


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_compose_parses_and_names_existing_files(path: Path) -> None:
    text = _interpolate(path.read_text(), {})
    compose = yaml.safe_load(text)
    services = compose["services"]
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (path.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            assert (path.parent / host).exists(), f"{name}: no {host}"
        command = [str(w) for w in service.get("command", [])]
        if service.get("entrypoint") == ["adaptor"] and command:
            assert command[0] in _verbs()
        if "-m" in command:
            module = command[command.index("-m") + 1]
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module
        if "--config" in command:
            config = command[command.index("--config") + 1]
            load_config(REPO / config.removeprefix("/app/"))  # the image copies the repo to /app


def test_compose_starts_a_head_workers_and_the_default_flow_job() -> None:
    services = yaml.safe_load(_interpolate((DOCKER / "compose.yaml").read_text(), {}))["services"]
    head, worker, job = services["ray-head"], services["ray-worker"], services["job"]
    assert head["entrypoint"] == ["ray"] and "--head" in head["command"]
    port = next(w for w in head["command"] if w.startswith("--port=")).split("=")[1]
    dashboard = next(w for w in head["command"] if w.startswith("--dashboard-port=")).split("=")[1]
    assert f"--address=ray-head:{port}" in worker["command"]
    assert job["command"][:2] == ["job", "submit"]
    assert f"--address=http://ray-head:{dashboard}" in job["command"]
    assert job["command"][job["command"].index("--config") + 1].endswith("configs/default.yaml")
    assert "/data_shards" in job["command"]
    for service in (head, worker, job):
        assert "../data_shards:/data_shards" in service["volumes"]
    assert job["depends_on"]["ray-head"]["condition"] == "service_healthy"
