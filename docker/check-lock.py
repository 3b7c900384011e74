#!/usr/bin/env python3
"""Does docker/requirements.lock agree with pyproject.toml? Exit 0 if so, 1 with the reasons
(2: could not check).

The same rules as tests/cluster/test_docker_static.py::test_lock_agrees_with_pyproject: every
dependency (and every optional group named by the lock header's ``--extra``) is pinned, within
its specifier, exact pins equal, every pin hashed; and the groups pyproject.toml names under
``test`` are in the header. Needs only Python >= 3.11 and ``packaging`` — or pip, whose
vendored copy serves — so docker/check-image.sh can run it before a multi-GB build.

    python3 docker/check-lock.py [--lock docker/requirements.lock] [--pyproject pyproject.toml]

Out of date: regenerate with the command in the lock's header (``uv pip compile … -o
docker/requirements.lock``; uv keeps the pins already there unless told to upgrade).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ModuleNotFoundError:  # pip's vendored copy
    try:
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import canonicalize_name
        from pip._vendor.packaging.version import Version
    except ModuleNotFoundError:
        print("check-lock: needs the `packaging` module or pip (python3-pip)", file=sys.stderr)
        sys.exit(2)

REPO = Path(__file__).resolve().parents[1]


def locked(lock: Path) -> tuple[dict[str, tuple[Version, int]], list[str], str]:
    """(name → (version, number of hashes), extras in the header, the header's command)."""
    pins: dict[str, tuple[Version, int]] = {}
    name = None
    for line in lock.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            name = canonicalize_name(m.group(1))
            pins[name] = (Version(m.group(2)), 0)
        elif name and re.search(r"--hash=sha256:[0-9a-f]{64}", line):
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    header = [line.lstrip("# ").strip() for line in lock.read_text().splitlines()[:3]]
    command = next((line for line in header if "compile" in line), " ".join(header))
    extras = re.findall(r"--extra[= ](\S+)", command)
    extras += ["*"] if "--all-extras" in command else []
    return pins, extras, command


def problems(lock: Path, pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    pins, extras, header = locked(lock)
    found = []
    if "--generate-hashes" not in header:
        found.append("the lock was not made with --generate-hashes")
    optional = project.get("optional-dependencies", {})
    groups = list(optional) if "*" in extras else extras
    for group in ("test",):
        if group in optional and group not in groups:
            found.append(f"the lock header does not include --extra {group}")
    wanted = [Requirement(r) for r in project.get("dependencies", [])]
    for group in groups:
        if group not in optional:
            found.append(f"the lock header names --extra {group}, which pyproject.toml lacks")
        wanted += [Requirement(r) for r in optional.get(group, [])]
    for req in wanted:
        name = canonicalize_name(req.name)
        if name not in pins:
            found.append(f"{req} is not in {lock.name}")
            continue
        version, _ = pins[name]
        if not req.specifier.contains(version, prereleases=True):
            found.append(f"{req}: {lock.name} has {version}")
    found += [f"{name}=={v} has no --hash lines" for name, (v, n) in pins.items() if n == 0]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=REPO / "docker" / "requirements.lock")
    parser.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    args = parser.parse_args()
    for path in (args.lock, args.pyproject):
        if not path.is_file():
            print(f"check-lock: {path} does not exist", file=sys.stderr)
            return 2
    found = problems(args.lock, args.pyproject)
    if found:
        _, _, header = locked(args.lock)
        print(f"check-lock: {args.lock} does not match {args.pyproject}:", file=sys.stderr)
        for problem in found:
            print(f"  - {problem}", file=sys.stderr)
        print(f"regenerate it from the repository root with:\n  {header}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
