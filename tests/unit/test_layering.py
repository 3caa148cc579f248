"""The layering rule of the README ("Layout"), checked by reading every import.

Each room of ``imaginator/`` (a sub-package or a top-level module) sits on a
layer; a module may import only from its own room or from rooms on lower
layers, so the package graph has no cycles and the flow reads downward.
Imports inside ``if TYPE_CHECKING:`` count too: a type-only arrow upward is
still an arrow upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "imaginator"

#: Lowest first. Rooms on one line share a layer and must not import each other.
LAYERS: list[set[str]] = [
    {"__init__"},
    {"goformats"},
    {"runtime"},
    {"srpc"},
    {"image"},
    {"store"},
    {"export"},
    {"config"},
    {"sources"},
    {"pipeline"},
    {"scheduler"},
    {"deps", "autobuild", "publish"},
    {"rpc", "web"},
    {"tools"},
    {"flags"},
    {"lifecycle"},
    {"daemon"},
    {"tap"},
    {"cli"},
]
LAYER_OF = {room: index for index, rooms in enumerate(LAYERS) for room in rooms}
MAX_LINES = 650
#: Modules still waiting for their split (issue 9). The list may only shrink:
#: a module on it that has come under the limit fails the test below.
STILL_TO_SPLIT: set[str] = set()


def _room(module: str) -> str | None:
    """``imaginator.web.pages`` -> ``web``; ``imaginator`` -> ``__init__``."""
    parts = module.split(".")
    if parts[0] != "imaginator":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        found.append((".".join(relative.parts), path))
    return found


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import of ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # "from imaginator import tap" imports the room ``tap`` (but
            # ``__version__`` is a name of the package itself).
            if base == "imaginator":
                found.extend(
                    (node.lineno, f"imaginator.{alias.name}")
                    for alias in node.names
                    if not alias.name.startswith("__")
                )
    return found


def test_every_room_has_a_layer():
    rooms = {_room(module) for module, _path in _modules()}
    assert rooms - set(LAYER_OF) == set(), "add new rooms to LAYERS and to README.md's Layout"


def test_imports_point_downward():
    wrong = []
    for module, path in _modules():
        here = _room(module)
        for line, imported in _imports(module, path):
            there = _room(imported)
            if there is None or there == here or there == "__init__":
                continue
            if LAYER_OF[there] >= LAYER_OF[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} -> {there}")
    assert wrong == []


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda value: str(value))
def test_module_size(module, path):
    lines = len(path.read_text("utf-8").splitlines())
    if module in STILL_TO_SPLIT:
        assert lines > MAX_LINES, f"{module} is split now: take it off STILL_TO_SPLIT"
    else:
        assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by responsibility"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The reader resolves relative imports and ``from imaginator import X``."""
    source = tmp_path / "imaginator" / "image" / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text("from ..scheduler import Builder\nfrom imaginator import tap\n")
    imported = [name for _line, name in _imports("imaginator.image.bad", source)]
    assert "imaginator.scheduler" in imported
    assert "imaginator.tap" in imported
