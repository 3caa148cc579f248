"""Build commands without ``fsync``: a seccomp filter that makes the sync calls no-ops.

A build root is scratch space: it is scanned into the store and thrown away
(or kept as a cache that is marked complete only after a ``syncfs``), and the
store makes what it keeps durable with one ``syncfs`` before it writes an
image record. The ``fsync`` that ``dpkg`` does for every file it unpacks, and
that other tools do on their own, only slows builds down (and debootstrap is
mostly that). What ``eatmydata`` does with ``LD_PRELOAD``, this does in the
kernel: a seccomp filter (classic BPF) answers ``fsync``, ``fdatasync``,
``sync``, ``syncfs``, ``sync_file_range`` and ``msync`` with success without
doing them. A filter is inherited across ``fork``, ``exec`` and ``chroot`` and
needs no library inside the root, so it works for any distribution and for
static binaries too.

Sandboxed commands get it from ``bwrap --seccomp FD``; host commands (the
bootstrap command) through :data:`LAUNCHER`, a few lines of Python that
install it and ``exec`` the command. Either way the program is read from a
file descriptor (:data:`PROGRAM_FD`) the process runner fills with
:func:`nosync_program`. Calls of another ABI (an i386 program on amd64) not
listed here are passed through unchanged: they are just not faster.
"""

from __future__ import annotations

import struct
import sys

__all__ = ["LAUNCHER", "PROGRAM_FD", "SYNC_SYSCALLS", "launcher_argv", "nosync_program"]

PROGRAM_FD = 3
"""The child's file descriptor that carries the filter program."""

# Audit architecture tokens (linux/audit.h) and the system call numbers of
# msync, fsync, fdatasync, sync, sync_file_range and syncfs in each ABI.
SYNC_SYSCALLS: dict[int, tuple[int, ...]] = {
    0xC000003E: (26, 74, 75, 162, 277, 306),  # x86_64
    0x40000003: (144, 118, 148, 36, 314, 344),  # i386
    0xC00000B7: (227, 82, 83, 81, 84, 267),  # aarch64
    0x40000028: (144, 118, 148, 36, 341, 373),  # arm (EABI; 341: arm_sync_file_range)
}
# x32 programs run under the x86_64 token with this bit set in the call number.
_X32_BIT = 0x40000000
_X86_64 = 0xC000003E

# Classic BPF (linux/filter.h, linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06
_NR_OFFSET = 0  # struct seccomp_data: int nr; __u32 arch; ...
_ARCH_OFFSET = 4
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000  # | errno; errno 0: the call "succeeds" without running


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def nosync_program() -> bytes:
    """The filter as a ``struct sock_filter`` array (native byte order).

    For each known architecture: if the call's architecture is this one and
    its number is a sync call, return 0; anything else is allowed.
    """
    blocks: list[list[tuple[int, int, int, str]]] = []
    for arch, numbers in SYNC_SYSCALLS.items():
        if arch == _X86_64:
            numbers = (*numbers, *(n | _X32_BIT for n in numbers))
        blocks.append(
            [(_JEQ_K, arch, 0, "next-arch"), (_LD_W_ABS, _NR_OFFSET, 0, "")]
            + [(_JEQ_K, n, 0, "errno") for n in numbers]
            + [(_RET_K, _RET_ALLOW, 0, "")]
        )
    # Lay the blocks out after "load arch", then the final allow and errno returns.
    code: list[tuple[int, int, str]] = [(_LD_W_ABS, _ARCH_OFFSET, "")]
    starts = []
    for block in blocks:
        starts.append(len(code))
        code += [(op, k, target) for op, k, _unused, target in block]
    allow_at = len(code)
    code.append((_RET_K, _RET_ALLOW, ""))
    errno_at = len(code)
    code.append((_RET_K, _RET_ERRNO, ""))
    out = []
    for index, (op, k, target) in enumerate(code):
        if op != _JEQ_K:
            out.append(_insn(op, k))
            continue
        block_index = max(i for i, start in enumerate(starts) if start <= index)
        if target == "errno":
            jt, jf = errno_at - index - 1, 0
        else:  # the architecture test: on a mismatch, go to the next block's test
            following = starts[block_index + 1] if block_index + 1 < len(starts) else allow_at
            jt, jf = 0, following - index - 1
        out.append(_insn(op, k, jt, jf))
    return b"".join(out)


LAUNCHER = """\
import ctypes, os, sys
data = b""
while chunk := os.read(3, 65536):
    data += chunk
os.close(3)
program = ctypes.create_string_buffer(data, len(data))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(data) // 8, ctypes.addressof(program))
libc = ctypes.CDLL(None, use_errno=True)
ulong = ctypes.c_ulong
libc.prctl.argtypes = [ctypes.c_int, ulong, ctypes.c_void_p, ulong, ulong]
if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
    print("nosync: cannot install the seccomp filter: " + os.strerror(ctypes.get_errno())
          + "; running with fsync", file=sys.stderr, flush=True)
os.execvp(sys.argv[1], sys.argv[1:])
"""
"""Installs the filter read from fd 3 (``PR_SET_SECCOMP``, ``SECCOMP_MODE_FILTER``)
and exec's its arguments; if the kernel refuses, it says so and runs them anyway."""


def launcher_argv(argv: list[str], python: str = sys.executable) -> list[str]:
    """``argv`` run by :data:`LAUNCHER` (the child needs the program on fd 3).

    ``-I -S``: no site packages, no environment, nothing from the working
    directory: the launcher needs only the standard library.
    """
    if not argv:
        raise ValueError("empty argv")
    return [python, "-I", "-S", "-c", LAUNCHER, *argv]
