"""Redaction of whole texts and of texts given in pieces (imaginator.runtime.redact)."""

from __future__ import annotations

import itertools
import random

import pytest

from imaginator.runtime.redact import REDACTED, Redactor, StreamRedactor


def reference(text: str, secrets: list[str]) -> str:
    """The specification, naively: every occurrence found with ``str.find``,
    overlapping occurrences merged into one run, each run one ``[REDACTED]``."""
    spans = []
    for secret in set(secrets):
        if not secret:
            continue
        at = text.find(secret)
        while at >= 0:
            spans.append((at, at + len(secret)))
            at = text.find(secret, at + 1)
    out, pos, run = [], 0, None
    for start, end in sorted(spans):
        if run is not None and start < run[1]:
            run[1] = max(run[1], end)
            continue
        if run is not None:
            out += [text[pos : run[0]], REDACTED]
            pos = run[1]
        run = [start, end]
    if run is not None:
        out += [text[pos : run[0]], REDACTED]
        pos = run[1]
    return "".join(out) + text[pos:]


def streamed(redactor: Redactor, pieces: list[str]) -> tuple[str, int]:
    """The output for ``pieces`` fed one by one, and the most it ever held back."""
    stream = StreamRedactor(lambda: redactor)
    out, held = [], 0
    for piece in pieces:
        out.append(stream.feed(piece))
        held = max(held, stream.held)
    out.append(stream.finish())
    return "".join(out), held


def split(text: str, cuts: tuple[int, ...]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def test_whole_text_longest_first_and_overlaps() -> None:
    redact = Redactor(["pass", "password", ""])
    assert redact("password pass x") == f"{REDACTED} {REDACTED} x"
    # Two secrets overlapping in the text leave nothing of either.
    assert Redactor(["abc", "cde"])("xabcdex") == f"x{REDACTED}x"
    assert Redactor(["aa"])("baaaab") == f"b{REDACTED}b"
    assert Redactor([])("text") == "text"


SECRET_SETS = [
    ["hunter2"],
    ["pass", "password"],  # one secret contains another
    ["abcab", "bcabc", "cab"],  # secrets overlapping each other
    ["aa"],  # a secret overlapping itself
    ["line\nbreak", "break"],  # a secret with a newline
    ["pässwörd"],  # not ASCII
]


@pytest.mark.parametrize("secrets", SECRET_SETS)
def test_every_split_into_two_and_three_pieces_gives_the_whole_text_result(
    secrets: list[str],
) -> None:
    filler = "x\ny"
    text = filler + filler.join(secrets) + secrets[0] + secrets[-1] + "abcabcab" + filler
    redactor = Redactor(secrets)
    whole = redactor(text)
    assert whole == reference(text, secrets)
    for secret in secrets:
        assert secret not in whole
    positions = range(len(text) + 1)
    for cuts in itertools.chain(((i,) for i in positions), itertools.combinations(positions, 2)):
        out, held = streamed(redactor, split(text, cuts))
        assert out == whole, cuts
        assert held <= redactor.longest - 1


def test_random_texts_and_splits_match_the_reference() -> None:
    rng = random.Random(20240610)
    for _ in range(2000):
        alphabet = rng.choice(["ab", "abc", "ab\n"])
        secrets = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
            for _ in range(rng.randint(1, 3))
        ]
        text = "".join(rng.choice(alphabet + "x") for _ in range(rng.randint(0, 30)))
        redactor = Redactor(secrets)
        whole = redactor(text)
        assert whole == reference(text, secrets), (secrets, text)
        count = rng.randint(1, min(6, len(text) + 1))
        cuts = tuple(sorted(rng.sample(range(len(text) + 1), count)))
        assert streamed(redactor, split(text, cuts))[0] == whole, (secrets, text, cuts)


def test_complete_lines_are_not_held_back() -> None:
    redactor = Redactor(["a-long-secret-value"])
    stream = StreamRedactor(lambda: redactor)
    assert stream.feed("first line\n") == "first line\n"
    assert stream.feed("a-long-secret-value\n") == f"{REDACTED}\n"
    assert stream.feed("partial") == ""
    assert stream.finish() == "partial"


def test_a_run_of_overlapping_occurrences_is_not_held_whole() -> None:
    """A run may go on for ever ("aaaa…" with the secret "aa"): it is given out
    as it goes (one ``[REDACTED]``), holding back only the longest secret."""
    redactor = Redactor(["aa"])
    stream = StreamRedactor(lambda: redactor)
    out = [stream.feed("x" + "a" * 10)]
    for _ in range(1000):
        out.append(stream.feed("a" * 7))
        assert stream.held <= 1
    out.append(stream.feed("ay"))
    out.append(stream.finish())
    assert "".join(out) == f"x{REDACTED}y"


def test_new_secrets_apply_to_what_is_held_back() -> None:
    current = Redactor(["old-one"])
    stream = StreamRedactor(lambda: current)
    first = stream.feed("text ends with new-")
    assert stream.held > 0
    current = Redactor(["new-one", "old-one"])
    rest = stream.feed("one and old-one\n") + stream.finish()
    assert first + rest == f"text ends with {REDACTED} and {REDACTED}\n"
