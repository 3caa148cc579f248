"""The no-sync seccomp filter, run through a small classic-BPF interpreter.

The real kernel runs it in ``tests/integration/test_fast_paths.py`` (a sync
call on a pipe "succeeds" in a build); here every architecture and call of the
table is checked, and that nothing else is touched.
"""

from __future__ import annotations

import struct

import pytest

from imaginator.runtime.nosync import LAUNCHER, SYNC_SYSCALLS, launcher_argv, nosync_program

ALLOW = 0x7FFF0000
ERRNO_0 = 0x00050000
X86_64, I386, AARCH64 = 0xC000003E, 0x40000003, 0xC00000B7


def run_filter(program: bytes, nr: int, arch: int) -> int:
    """What the kernel's seccomp would return for a call (only the opcodes used)."""
    code = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    data = struct.pack("=iI", nr, arch) + bytes(56)
    accumulator, pc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x20:  # ld [k]
            accumulator = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif op == 0x15:  # jeq #k
            pc += 1 + (jt if accumulator == k else jf)
        elif op == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


@pytest.mark.parametrize("arch", sorted(SYNC_SYSCALLS))
def test_sync_calls_return_zero_and_others_pass(arch):
    program = nosync_program()
    for nr in SYNC_SYSCALLS[arch]:
        assert run_filter(program, nr, arch) == ERRNO_0
    others = set(range(0, 460)) - set(SYNC_SYSCALLS[arch])
    assert {run_filter(program, nr, arch) for nr in others} == {ALLOW}


def test_numbers_are_per_architecture():
    program = nosync_program()
    # A number means another call in another ABI: only the matching pair is caught.
    assert run_filter(program, 74, X86_64) == ERRNO_0
    assert run_filter(program, 74, I386) == ALLOW
    assert run_filter(program, 118, I386) == ERRNO_0
    assert run_filter(program, 118, X86_64) == ALLOW
    assert run_filter(program, 82, AARCH64) == ERRNO_0
    # x32 programs: the x86_64 token with bit 30 in the number.
    assert run_filter(program, 74 | 0x40000000, X86_64) == ERRNO_0
    # An architecture the table does not know is left alone.
    assert run_filter(program, 74, 0x12345678) == ALLOW


def test_launcher_runs_from_the_standard_library_alone():
    argv = launcher_argv(["debootstrap", "bookworm"], python="/usr/bin/python3")
    assert argv == ["/usr/bin/python3", "-I", "-S", "-c", LAUNCHER, "debootstrap", "bookworm"]
    with pytest.raises(ValueError):
        launcher_argv([])
