"""The oldest versions setup.cfg allows are enough: the fast suite passes with exactly them.

A fresh virtual environment gets every ``install_requires`` package at its floor
(``>=X`` installed as ``==X``; what they depend on in turn is pip's choice), plus
the test tools, and runs the fast suite (``-m "not slow"``) of this repository.
Needs the package index.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.support.configs import REPO

#: Test extras the suite does not need to run (lint and type checks).
LINT_TOOLS = ("ruff", "mypy")


def requirements(section: str, key: str) -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return [Requirement(line) for line in config[section][key].split("\n") if line.strip()]


def floors() -> dict[str, tuple[str, Version]]:
    """Package name -> (pip requirement pinned at the floor, floor version)."""
    pinned = {}
    for requirement in requirements("options", "install_requires"):
        minimums = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(minimums) == 1, f"{requirement}: needs exactly one '>=' floor"
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        pinned[requirement.name] = (
            f"{requirement.name}{extras}=={minimums[0]}",
            Version(minimums[0]),
        )
    return pinned


def test_every_requirement_has_a_floor():
    assert {"Twisted", "pyOpenSSL", "dulwich", "klein", "treq", "Jinja2"} <= set(floors())


@pytest.mark.slow
def test_the_fast_suite_passes_with_the_floor_versions(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pinned = floors()
    tools = [
        str(r)
        for r in requirements("options.extras_require", "test")
        if r.name not in LINT_TOOLS and not r.name.startswith("types-")
    ]
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", *(pin for pin, _ in pinned.values()), *tools],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    report = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m, sys; "
            "print('\\n'.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))",
            *pinned,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = dict(line.split(" ", 1) for line in report.splitlines())
    assert {name: Version(installed[name]) for name in pinned} == {
        name: floor for name, (_, floor) in pinned.items()
    }

    # A short base directory: some tests bind unix sockets, whose paths are limited.
    basetemp = tempfile.mkdtemp(prefix="imaginator-floors-")
    pytest_args = ["-q", "-p", "no:cacheprovider", "-m", "not slow", f"--basetemp={basetemp}"]
    try:
        suite = subprocess.run(
            [python, "-m", "pytest", *pytest_args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)
    summary = suite.stdout[-6000:]
    assert suite.returncode == 0, summary
    assert re.search(r"\d+ passed", summary)
