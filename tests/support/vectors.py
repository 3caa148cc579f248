"""The Go imaginator's recorded outputs, in ``shared/reference/vectors`` beside the clone."""

from tests.support.configs import REPO

VECTORS = REPO.parent / "shared" / "reference" / "vectors"
if not VECTORS.is_dir():
    raise RuntimeError(f"reference vectors missing: {VECTORS} (shared/ must sit beside the clone)")
