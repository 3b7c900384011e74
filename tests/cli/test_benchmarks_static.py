"""Scripts run as ``python folder/x.py`` shadow no library, and the documented commands run.

``python benchmarks/x.py`` puts ``benchmarks/`` first on ``sys.path`` (Ray workers inherit
it), so a file there named like an installed module replaces that module for every import:
``benchmarks/peft.py`` once broke ``benchmarks/pretrain.py``'s workers that way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_FOLDERS = ("benchmarks", "tests", "pipelines")
DOCUMENTS = ("README.md", "benchmarks/RESULTS.md")
_COMMAND = re.compile(r"^\s*python (benchmarks/\S+)(.*)$")
_FIND = """
import importlib.util, json, sys
found = {}
for name in json.loads(sys.argv[1]):
    spec = importlib.util.find_spec(name)
    if spec is not None:
        found[name] = spec.origin or str(list(spec.submodule_search_locations or []))
print(json.dumps(found))
"""
_HELP = """
import contextlib, io, json, os, runpy, sys, traceback
helps = {}
for script in json.loads(sys.argv[1]):
    sys.argv, sys.path[0] = [script, "--help"], os.path.abspath(os.path.dirname(script))
    text, code = io.StringIO(), 0
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            code = stop.code or 0
        except BaseException:
            traceback.print_exc()
            code = 1
    helps[script] = [code, text.getvalue()]
print(json.dumps(helps))
"""


def _module_names(folder: Path) -> dict[str, Path]:
    """Top-level module names the files of ``folder`` take when it is first on sys.path."""
    names = {}
    for path in folder.iterdir():
        if path.suffix == ".py" and path.stem != "__init__":
            names[path.stem] = path
        elif path.is_dir() and (path / "__init__.py").is_file():
            names[path.name] = path
    return names


def documented_commands() -> list[tuple[str, str, str]]:
    """``(document, script, arguments)`` of every ``python benchmarks/….py`` command."""
    commands = []
    for document in DOCUMENTS:
        lines = (ROOT / document).read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if match := _COMMAND.match(line):
                arguments = match.group(2)
                while arguments.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    arguments = arguments.rstrip()[:-1] + " " + lines[i]
                commands.append((document, match.group(1), arguments.split("#")[0].strip()))
    return commands


def test_no_script_folder_file_shadows_an_installed_module(tmp_path: Path) -> None:
    names = {
        name: path
        for folder in SCRIPT_FOLDERS
        for name, path in _module_names(ROOT / folder).items()
    }
    # a clean interpreter (-I: no script folder, no current folder on sys.path) elsewhere
    out = subprocess.run(
        [sys.executable, "-I", "-c", _FIND, json.dumps(sorted(names))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    shadowed = {
        f"{names[name].relative_to(ROOT)} shadows {origin}"
        for name, origin in json.loads(out.stdout).items()
        if Path(origin).resolve() != names[name].resolve()
    }
    assert not shadowed, "rename these files:\n" + "\n".join(sorted(shadowed))


def test_the_checker_sees_a_shadowing_file(tmp_path: Path) -> None:
    (tmp_path / "peft.py").write_text("")
    (tmp_path / "encoder_tuning.py").write_text("")
    assert set(_module_names(tmp_path)) == {"peft", "encoder_tuning"}
    out = subprocess.run(
        [sys.executable, "-I", "-c", _FIND, json.dumps(["peft", "encoder_tuning"])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert set(json.loads(out.stdout)) == {"peft"}


def test_documented_benchmark_commands_name_scripts_that_run() -> None:
    commands = documented_commands()
    assert {script for _, script, _ in commands} >= {
        "benchmarks/embed.py",
        "benchmarks/pretrain.py",
        "benchmarks/encoder_tuning.py",
    }
    missing = [f"{doc}: {script}" for doc, script, _ in commands if not (ROOT / script).is_file()]
    assert not missing, f"documented benchmark scripts that do not exist: {missing}"

    # each script's `--help` as `python benchmarks/x.py --help` runs it (its folder first on
    # sys.path), all in one interpreter so that the libraries they share load once
    scripts = sorted({script for _, script, _ in commands})
    out = subprocess.run(
        [sys.executable, "-c", _HELP, json.dumps(scripts)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    helps = json.loads(out.stdout.splitlines()[-1])
    for document, script, arguments in commands:
        code, text = helps[script]
        assert code == 0, f"{script} --help failed:\n{text[-3000:]}"
        for option in re.findall(r"(?<!\S)--[a-z][a-z0-9-]*", arguments):
            assert option in text, f"{document}: {script} has no option {option}"
