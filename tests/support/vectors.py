"""The Go imaginator's and imageserver's recorded outputs, kept with the tests.

They were captured from the real Go programs (see ``tests/data/go-vectors/README.md``)
and live in the repository, so a plain clone runs every test that compares with them.
"""

from pathlib import Path

VECTORS = Path(__file__).resolve().parent.parent / "data" / "go-vectors"
