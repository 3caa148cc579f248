"""The same configuration built by the Go imaginator and by ours, side by side (issue 12).

Usage (as root, from the repository root)::

    .venv/bin/python bench/compare_go.py [--rounds N] [--quick] [--ours-backend=embedded]
                                         [--timeout-minutes M] [--json FILE]

Each round starts both daemons afresh, one after the other (the order swaps
every round so neither always runs on a warmer machine), each with its state
in a temporary directory: the Go imaginator on a Go imageserver of its own, ours
on its embedded store (``--ours-backend=imageserver``: on a Go imageserver of its
own too). The Go ``builder-tool`` sends the same requests to both:

1. build the bootstrap stream (Debian 12 minbase by ``debootstrap``; busybox
   with ``--quick``);
2. build ``bench/base`` on it (one package, one file, from a git manifest);
3. build ``bench/base`` again, nothing having changed;
4. build ``bench/app`` on ``bench/base``;
5. run the automatic rebuild cycle over the unchanged chain bootstrap → base
   → app (``start-auto-builds``, waiting for it to complete).

It then prints min/median/max of every figure per daemon and the ratio
ours/Go of the medians (below 1: ours is faster or smaller). See
``bench/README.md`` for what each figure means. The figures are noisy when
other work shares the machine; nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from compare_figures import (
    BuildLogFigures,
    LogEvent,
    Row,
    build_seconds,
    built_images,
    cycle_seconds,
    parse_build_log,
    parse_daemon_log,
    render_table,
    skipped_builds,
)
from compare_setup import (
    DEBIAN_STREAMS,
    FAST_PATHS_CHOICES,
    REPO,
    SetupError,
    Workload,
    make_certificates,
    write_workload,
)
from compare_stacks import (
    BASE_ENV,
    HOST,
    Stack,
    StackError,
    count_objects,
    detach_mounts,
    kill_strays,
    mounts_under,
    start_go,
    start_ours,
    stray_processes,
)

DAEMONS = ("Go", "ours")
PEERS = REPO.parent / "shared" / "peers"

#: Longest a single request may take (seconds); the whole run has its own bound too.
STEP_LIMITS = {"bootstrap": 20 * 60, "build": 15 * 60, "cycle": 45 * 60}
QUICK_STEP_LIMIT = 120
#: How long a daemon may take to write its log line after answering the request.
LOG_LINE_SECONDS = 10.0

#: (key, label, kind) of the report's rows, in order; kinds as in compare_figures.format_value.
FIGURES = [
    ("bootstrap_e2e", "bootstrap build, end to end", "s"),
    ("bootstrap_wall", "  wall clock around the request", "s"),
    ("bootstrap_command", "  bootstrap command (Build time)", "s"),
    ("bootstrap_overhead", "  overhead above the command", "s"),
    ("bootstrap_stored", "  objects stored", "n"),
    ("layered_e2e", "layered build, end to end", "s"),
    ("layered_wall", "  wall clock around the request", "s"),
    ("layered_stored", "  objects stored", "n"),
    ("rebuild_e2e", "unchanged rebuild, end to end", "s"),
    ("rebuild_uploaded", "  objects uploaded by the scan", "n"),
    ("rebuild_stored", "  objects stored", "n"),
    ("rebuild_published", "  images published", "n"),
    ("cycle_e2e", "auto-rebuild cycle, unchanged chain", "s"),
    ("cycle_wall", "  wall clock around the request", "s"),
    ("cycle_stored", "  objects stored", "n"),
    ("cycle_published", "  images published", "n"),
    ("cycle_skipped", "  builds skipped (nothing could change)", "n"),
    ("cycle_fraction", "  of building the chain first", "%"),
    ("rss_daemon", "daemon peak RSS (VmHWM)", "MiB"),
    ("rss_total", "  with its imageserver", "MiB"),
]

Figures = dict[str, float | None]
T = TypeVar("T")


class BenchError(Exception):
    """A request failed or the run ran out of time; the message says which."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: stop, clean up, report what was measured."""


@dataclass(frozen=True)
class Build:
    """One ``build-image`` request as measured."""

    name: str
    wall: float
    seconds: float | None
    log: BuildLogFigures
    stored: int


class Runner:
    """Sends the requests (always through the Go ``builder-tool``) within the run's time."""

    def __init__(self, peers: Path, pki: Path, deadline: float, quick: bool) -> None:
        self.tool = peers / "builder-tool"
        self.certificates = pki / "user"
        self.deadline = deadline
        self.quick = quick

    def _limit(self, step: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BenchError("out of time (--timeout-minutes)")
        return min(left, QUICK_STEP_LIMIT if self.quick else STEP_LIMITS[step])

    def request(self, stack: Stack, step: str, *args: str) -> tuple[str, str, float]:
        """Run ``builder-tool ARGS`` against ``stack``; (stdout, stderr, wall seconds)."""
        argv = [
            str(self.tool),
            f"-imaginatorHostname={HOST}",
            f"-imaginatorPortNum={stack.port}",
            f"-certDirectory={self.certificates}",
            *args,
        ]
        limit = self._limit(step)
        started = time.monotonic()
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=limit,
                env=dict(BASE_ENV, HOME=str(self.certificates.parent)),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{stack.name}: builder-tool {' '.join(args)} took over {limit:.0f}s"
            ) from None
        wall = time.monotonic() - started
        if result.returncode != 0:
            raise BenchError(
                f"{stack.name}: builder-tool {' '.join(args)} failed "
                f"(status {result.returncode}):\n{_tail(result.stderr)}\n"
                f"{stack.daemon.name} log:\n{stack.daemon.tail()}"
            )
        return result.stdout, result.stderr, wall

    def build(self, stack: Stack, stream: str, step: str = "build") -> Build:
        before, offset = count_objects(stack.objects), stack.daemon.size()
        args = ("-alwaysShowBuildLog", "build-image", stream)
        stdout, stderr, wall = self.request(stack, step, *args)
        lines = stdout.split()
        if not lines:
            raise BenchError(f"{stack.name}: build-image {stream} printed no image name")
        name = lines[-1]
        seconds = _await_log(stack, offset, lambda events: build_seconds(events, name))
        stored = count_objects(stack.objects) - before
        return Build(name, wall, seconds, parse_build_log(stderr), stored)


def _await_log(stack: Stack, offset: int, read: Callable[[list[LogEvent]], T | None]) -> T | None:
    """What ``read`` finds in the daemon's log written since ``offset``, waiting a little."""
    deadline = time.monotonic() + LOG_LINE_SECONDS
    while True:
        found = read(parse_daemon_log(stack.daemon.text(offset)))
        if found is not None or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def measure(runner: Runner, stack: Stack, workload: Workload) -> Figures:
    """The five requests against one fresh stack, and its peak RSS."""
    boot = runner.build(stack, workload.bootstrap, "bootstrap")
    layered = runner.build(stack, workload.base)
    again = runner.build(stack, workload.base)
    app = runner.build(stack, workload.app)
    known = {boot.name, layered.name, again.name, app.name}

    before, offset = count_objects(stack.objects), stack.daemon.size()
    _out, _err, cycle_wall = runner.request(
        stack, "cycle", "-waitToStartAutoRebuilds", "-waitForAutoRebuilds", "start-auto-builds"
    )
    cycle = _await_log(stack, offset, cycle_seconds)
    cycle_events = parse_daemon_log(stack.daemon.text(offset))
    cycle_names = {name for name, _seconds in built_images(cycle_events)}
    chain = [boot.seconds, layered.seconds, app.seconds]
    chain_seconds = None if None in chain else sum(s for s in chain if s is not None)
    rss_daemon, rss_total = stack.peak_rss()
    return {
        "bootstrap_e2e": boot.seconds,
        "bootstrap_wall": boot.wall,
        "bootstrap_command": boot.log.command_seconds,
        "bootstrap_overhead": _minus(boot.seconds, boot.log.command_seconds),
        "bootstrap_stored": boot.stored,
        "layered_e2e": layered.seconds,
        "layered_wall": layered.wall,
        "layered_stored": layered.stored,
        "rebuild_e2e": again.seconds,
        "rebuild_uploaded": again.log.uploaded_objects,
        "rebuild_stored": again.stored,
        "rebuild_published": 0 if again.name == layered.name else 1,
        "cycle_e2e": cycle,
        "cycle_wall": cycle_wall,
        "cycle_stored": count_objects(stack.objects) - before,
        "cycle_published": len(cycle_names - known),
        "cycle_skipped": len(skipped_builds(cycle_events)),
        "cycle_fraction": (
            100 * cycle / chain_seconds if cycle is not None and chain_seconds else None
        ),
        "rss_daemon": rss_daemon,
        "rss_total": rss_total,
    }


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _brief(figures: Figures) -> str:
    def s(key: str) -> str:
        value = figures.get(key)
        return "—" if value is None else f"{value:.2f}s"

    return (
        f"bootstrap {s('bootstrap_e2e')} (command {s('bootstrap_command')}), "
        f"layered {s('layered_e2e')}, unchanged rebuild {s('rebuild_e2e')} "
        f"({figures['rebuild_stored']} objects stored), cycle {s('cycle_e2e')}, "
        f"peak RSS {figures['rss_daemon'] or 0:.0f} MiB"
    )


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def keep_logs(root: Path, destination: Path) -> None:
    """Copy the daemons' logs (``*.log``) and archived build logs (``builds/``) of ``root``."""
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and not path.is_symlink():
            if path.suffix == ".log" or "builds" in relative.parts[:-1]:
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)


class Bench:
    """One run: its temporary directory, the stacks alive, what went wrong in cleaning up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
        self.results: dict[str, list[Figures]] = {name: [] for name in DAEMONS}
        self.problems: list[str] = []
        self.active: list[Stack] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-compare-", dir=args.tmpdir))
        # The imageserver runs as nobody and must reach its directory inside.
        self.tmp.chmod(0o711)
        minutes = args.timeout_minutes or (10 if args.quick else 30 + 40 * self.rounds)
        self.deadline = time.monotonic() + 60 * minutes
        self.runner = Runner(args.peers, self.tmp / "pki", self.deadline, args.quick)
        self.load_at_start = _load()

    def start(self, daemon: str, root: Path, workload: Workload) -> Stack:
        pki, peers = self.tmp / "pki", self.args.peers
        if daemon == "Go":
            stack = start_go(root, pki, peers, workload)
        else:
            stack = start_ours(root, pki, peers, workload, self.args.ours_backend)
        self.active.append(stack)
        return stack

    def finish(self, stack: Stack, root: Path) -> None:
        """Stop a stack and remove its directory; note anything it left behind."""
        self.active.remove(stack)
        try:
            stack.stop()
        finally:
            self._sweep(root, stack.name)
            if self.args.keep_logs is not None:
                keep_logs(root, self.args.keep_logs / root.name)
            shutil.rmtree(root, ignore_errors=True)

    def _sweep(self, root: Path, who: str) -> None:
        strays = stray_processes(root)
        if strays:
            self.problems.append(f"{who}: killed processes left running under {root}: {strays}")
            kill_strays(strays)
            time.sleep(1)
        points = mounts_under(root)
        if points:
            self.problems.append(f"{who}: detached mounts left under {root}: {points}")
            detach_mounts(points)

    def run(self) -> None:
        make_certificates(self.tmp / "pki")
        workload = write_workload(
            self.tmp / "workload",
            quick=self.args.quick,
            fast_paths=self.args.fast_paths,
            bootstrap=self.args.bootstrap,
        )
        for daemon in DAEMONS:  # fail in seconds, not after a round of the other daemon
            root = self.tmp / f"preflight-{daemon}"
            self.finish(self.start(daemon, root, workload), root)
        for number in range(1, self.rounds + 1):
            order = DAEMONS if number % 2 else tuple(reversed(DAEMONS))
            for daemon in order:
                root = self.tmp / f"round{number}-{daemon}"
                _progress(f"round {number}/{self.rounds}: {daemon} ({_load()}) …")
                stack = self.start(daemon, root, workload)
                try:
                    figures = measure(self.runner, stack, workload)
                finally:
                    self.finish(stack, root)
                self.results[daemon].append(figures)
                _progress(f"round {number}/{self.rounds}: {daemon}: {_brief(figures)}")

    def close(self) -> None:
        """Stop whatever still runs and remove the temporary directory."""
        for stack in list(self.active):
            self.active.remove(stack)
            try:
                stack.stop()
            except StackError as exc:
                self.problems.append(str(exc))
        self._sweep(self.tmp, "bench")
        shutil.rmtree(self.tmp, onerror=self._rmtree_error)

    def _rmtree_error(self, _function: object, path: str, info: object) -> None:
        self.problems.append(f"could not remove {path}: {info}")

    def report(self) -> str:
        rows = [
            Row(label, kind, *[[f.get(key) for f in self.results[d]] for d in DAEMONS])
            for key, label, kind in FIGURES
        ]
        done = {d: len(self.results[d]) for d in DAEMONS}
        mode = (
            "quick (busybox bootstrap)"
            if self.args.quick
            else f"Debian 12 minbase bootstrap by {self.args.bootstrap}"
        )
        header = [
            f"Go imaginator ({self.args.peers}) vs ours ({_revision()}, "
            f"{self.args.ours_backend} store, fast paths {self.args.fast_paths}): {mode}",
            f"rounds completed: Go {done['Go']}, ours {done['ours']} of {self.rounds}; "
            f"{os.cpu_count()} cores, {self.load_at_start} at start, {_load()} at end",
            "lower is better in every row; ours/Go = median ours / median Go; other work on "
            "this machine makes the times noisy",
            "",
        ]
        return "\n".join(header) + render_table(rows)

    def dump(self, path: Path) -> None:
        document = {
            "quick": self.args.quick,
            "bootstrap": self.args.bootstrap,
            "rounds": self.rounds,
            "ours_backend": self.args.ours_backend,
            "fast_paths": self.args.fast_paths,
            "revision": _revision(),
            "results": self.results,
        }
        path.write_text(json.dumps(document, indent=2) + "\n")


def _revision() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown revision"


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build the same configuration with the Go imaginator and with ours."
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument(
        "--quick", action="store_true", help="a busybox bootstrap instead of debootstrap"
    )
    parser.add_argument(
        "--bootstrap",
        choices=tuple(DEBIAN_STREAMS),
        default="debootstrap",
        help="the program that makes the Debian root (the sample's stream for it)",
    )
    parser.add_argument(
        "--ours-backend",
        choices=("embedded", "imageserver"),
        default="embedded",
        help="our daemon's store: embedded, or a Go imageserver of its own",
    )
    parser.add_argument(
        "--fast-paths",
        choices=FAST_PATHS_CHOICES,
        default="sample",
        help="FastPaths of the configuration: the sample's, all off (a 'before' run), "
        "or the sample's without one of them",
    )
    parser.add_argument("--peers", type=Path, default=PEERS, help="the Go programs' directory")
    parser.add_argument(
        "--timeout-minutes", type=float, help="bound on the whole run (default by mode)"
    )
    parser.add_argument("--tmpdir", default="/var/tmp", help="where the temporary directory goes")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    parser.add_argument(
        "--keep-logs",
        type=Path,
        help="copy each round's daemon logs and archived build logs into this directory",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def check_host(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise SetupError("run as root (both daemons build as root)")
    for program in ("imaginator", "imageserver", "builder-tool"):
        if not os.access(args.peers / program, os.X_OK):
            raise SetupError(f"{args.peers / program}: missing (see ../shared/peers/README.md)")
    needed = ["setpriv", "unshare", "git", "bwrap", "busybox" if args.quick else args.bootstrap]
    for program in needed:
        if shutil.which(program, path=BASE_ENV["PATH"]) is None:
            raise SetupError(f"{program} is not installed: run scripts/setup-host")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_host(args)
    except SetupError as exc:
        print(f"compare_go: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    bench = Bench(args)
    status = 0
    try:
        bench.run()
    except (SetupError, StackError, BenchError) as exc:
        print(f"compare_go: {exc}", file=sys.stderr)
        status = 1
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"compare_go: interrupted ({exc or 'SIGINT'}): cleaning up", file=sys.stderr)
        status = 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # let the clean-up finish
        bench.close()
    if any(bench.results.values()):
        print(bench.report(), end="")
        if args.json:
            bench.dump(args.json)
    for problem in bench.problems:
        print(f"compare_go: clean-up: {problem}", file=sys.stderr)
    return status if not bench.problems else max(status, 1)


if __name__ == "__main__":
    sys.exit(main())
