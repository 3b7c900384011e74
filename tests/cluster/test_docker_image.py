"""The image build and run check (docker/check-image.sh, docker/make-base.sh, docker/check-lock.py).

Static checks always run: both Dockerfiles take ``ARG BASE_IMAGE``, the scripts are executable
and parse (``bash -n``), the lock check passes here and fails, naming the package, on a lock
that lacks one, the check's config is tiny, and check-image.sh names what is missing. Tests
that need podman (Debian: ``apt-get install podman``) skip, saying why, where it is absent
(as in CI). The full build-and-run downloads the torch wheels (several GB) and takes minutes,
so it runs only with ``ADAPTOR_TEST_IMAGE=1`` — and a base image made by docker/make-base.sh
(or BASE_IMAGE naming another local one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adaptor.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SCRIPTS = [DOCKER / "check-image.sh", DOCKER / "make-base.sh"]
PODMAN = shutil.which("podman")

needs_podman = pytest.mark.skipif(
    PODMAN is None, reason="podman is not installed (apt-get install podman)"
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="check-image.sh mounts the image and chroots: root only"
)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_take_a_base_image_argument(name: str) -> None:
    text = (DOCKER / name).read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+:\S+$", text, re.M), "ARG BASE_IMAGE with a default"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    # nothing assumes the official image's /usr/local python: `python` need not exist
    assert "python3 -m venv" in text and not re.search(r"\bpython -m venv", text)
    assert "--require-hashes -r docker/requirements.lock" in text
    # whole packages, so moving modules inside them never breaks the image
    assert re.search(r"^COPY (--chown=\S+ )?adaptor adaptor$", text, re.M)
    assert re.search(r"^COPY (--chown=\S+ )?pipelines pipelines$", text, re.M)


def test_both_dockerfiles_install_and_start_the_same_way() -> None:
    def steps(name: str) -> list[str]:
        text = (DOCKER / name).read_text().replace("\\\n", " ")
        lines = [" ".join(line.split()) for line in text.splitlines()]
        keep = ("RUN", "ENTRYPOINT", "CMD", "VOLUME")
        return [re.sub(r"/\S*venv", "VENV", line) for line in lines if line.startswith(keep)]

    def install_and_start(name: str) -> list[str]:  # the user and folder setup differ
        return [s for s in steps(name) if not (s.startswith("RUN") and "mkdir -p /app" in s)]

    assert install_and_start("Dockerfile") == install_and_start("Dockerfile.cuda")
    # the venv from the lock, the project, VOLUME, ENTRYPOINT, CMD
    assert len(install_and_start("Dockerfile")) == 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_and_parse(script: Path) -> None:
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(REPO)}"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "set -euo pipefail" in script.read_text()


def test_lock_check_passes_here_and_names_what_is_missing(tmp_path: Path) -> None:
    check = DOCKER / "check-lock.py"
    assert os.access(check, os.X_OK)
    subprocess.run([sys.executable, str(check)], check=True)
    lock = (DOCKER / "requirements.lock").read_text()
    stale = re.sub(r"^schemathesis==.*?(?=^\S)", "", lock, flags=re.M | re.S)
    assert stale != lock
    (tmp_path / "requirements.lock").write_text(stale.replace("torch==2.14.1", "torch==2.13.0"))
    result = subprocess.run(
        [sys.executable, str(check), "--lock", str(tmp_path / "requirements.lock")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "schemathesis>=3.30 is not in requirements.lock" in result.stderr
    assert "torch==2.14.1: requirements.lock has 2.13.0" in result.stderr
    assert "uv pip compile pyproject.toml" in result.stderr  # how to regenerate it


def test_check_config_is_tiny_and_valid() -> None:
    config = load_config(DOCKER / "check-config.yaml")
    assert config.synth.n <= 100 and config.pretrain.epochs <= 2
    assert config.finetune.fractions == [1.0] and config.finetune.seeds == [0]


def test_check_image_says_podman_is_missing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    result = subprocess.run(
        ["/bin/bash", str(DOCKER / "check-image.sh")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "podman is missing" in result.stderr and "apt-get install podman" in result.stderr


@needs_podman
@needs_root
def test_check_image_says_the_base_is_missing_before_building() -> None:
    result = subprocess.run(
        [str(DOCKER / "check-image.sh")],
        env={**os.environ, "BASE_IMAGE": "localhost/adaptor-test-no-such-base:0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "adaptor-test-no-such-base:0 not found" in result.stderr
    assert "docker/make-base.sh" in result.stderr


@pytest.mark.slow
@needs_podman
@needs_root
@pytest.mark.skipif(
    os.environ.get("ADAPTOR_TEST_IMAGE") != "1",
    reason="builds the image (several GB of wheels, minutes): set ADAPTOR_TEST_IMAGE=1",
)
def test_image_builds_and_runs_the_tiny_flow() -> None:
    result = subprocess.run(
        [str(DOCKER / "check-image.sh")], capture_output=True, text=True, timeout=3600
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    report = json.loads(lines[-1])
    assert report["image_built"] is True, result.stderr[-3000:]
    assert report["run_exit"] == 0, result.stderr[-3000:]
    assert result.returncode == 0
    assert report["image_mb"] > 100 and report["run_s"] > 0
