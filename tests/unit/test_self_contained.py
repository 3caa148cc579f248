"""A plain clone runs the tests: nothing they read lives outside the repository.

Only the optional peer-interop tests may look beside the clone (``../shared/peers``).
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.vectors import VECTORS

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"shared[\"'/ ,]+(\"|')?(reference|seed|DESIGN)")


def test_the_go_vectors_are_in_the_repository():
    assert VECTORS.is_dir()
    assert VECTORS.resolve().is_relative_to(REPO)
    assert (VECTORS / "config-imaginator-conf.json").is_file()


def test_no_code_reads_the_shared_directory():
    offenders = []
    for top in ("imaginator", "tests", "bench", "scripts"):
        for path in sorted((REPO / top).rglob("*")):
            if path == Path(__file__).resolve() or "data" in path.parts:
                continue
            if path.is_file() and path.suffix in {".py", ""}:
                text = path.read_text("utf-8", errors="replace")
                if OUTSIDE.search(text):
                    offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_the_pattern_sees_a_path_outside():
    assert OUTSIDE.search('REPO.parent / "shared" / "reference" / "vectors"')
    assert OUTSIDE.search("../shared/reference/vectors")
    assert not OUTSIDE.search("../shared/peers/imageserver")
