"""Go's texts for how a process ended (``os.ProcessState.String()``).

Error messages of build steps carry them (``exit status 1``, ``signal:
killed``), as the Go imaginator's do.
"""

from __future__ import annotations

import os

# Go's names for the Linux signals (syscall.Signal.String()).
GO_SIGNAL_NAMES: dict[int, str] = {
    1: "hangup",
    2: "interrupt",
    3: "quit",
    4: "illegal instruction",
    5: "trace/breakpoint trap",
    6: "aborted",
    7: "bus error",
    8: "floating point exception",
    9: "killed",
    10: "user defined signal 1",
    11: "segmentation fault",
    12: "user defined signal 2",
    13: "broken pipe",
    14: "alarm clock",
    15: "terminated",
    16: "stack fault",
    17: "child exited",
    18: "continued",
    19: "stopped (signal)",
    20: "stopped",
    21: "stopped (tty input)",
    22: "stopped (tty output)",
    23: "urgent I/O condition",
    24: "CPU time limit exceeded",
    25: "file size limit exceeded",
    26: "virtual timer expired",
    27: "profiling timer expired",
    28: "window changed",
    29: "I/O possible",
    30: "power failure",
    31: "bad system call",
}


def signal_description(signum: int) -> str:
    """Go's name for a signal (``killed`` for 9), ``signal N`` when it has none."""
    return GO_SIGNAL_NAMES.get(signum, f"signal {signum}")


def describe_wait_status(status: int) -> str:
    """Go's ``ProcessState.String()`` for a raw wait status."""
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        text = "signal: " + signal_description(os.WTERMSIG(status))
        return text + " (core dumped)" if os.WCOREDUMP(status) else text
    return f"unknown wait status {status:#x}"
