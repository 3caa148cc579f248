"""The ``imaginator`` command: Go-style flags, root and umask checks, then twistd.

Runs the twistd plugin ``imaginator`` in the foreground (no pid file, logging
to standard output) with umask 022, and exits with the daemon's exit status.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from imaginator.flags import (
    FlagError,
    HelpRequested,
    error_line,
    help_text,
    normalise_argv,
    read_flag_files,
)


def main(argv: Sequence[str] | None = None) -> int:
    """``imaginator [flags]``; a bad command line is one line on standard
    error naming the flag and what it wants, and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        normalised = normalise_argv(args)
    except HelpRequested:
        sys.stdout.write(help_text())
        return 0
    except FlagError as exc:
        sys.stderr.write(error_line(exc))
        return 2
    if os.geteuid() != 0:
        sys.stderr.write("imaginator: Must run the Image Builder as root\n")
        return 1
    try:
        from_files = read_flag_files()
    except (OSError, FlagError) as exc:
        sys.stderr.write(f"imaginator: {exc}\n")
        return 1
    os.umask(0o022)
    from twisted.python import usage
    from twisted.scripts import twistd

    config = twistd.ServerOptions()
    try:
        config.parseOptions(["--nodaemon", "--pidfile=", "imaginator", *from_files, *normalised])
    except usage.UsageError as exc:
        sys.stderr.write(f"imaginator: {exc}\n")
        return 2
    twistd.runApp(config)
    # The plugin's Options: a start-up failure set its exit status.
    return config.subOptions.exit_status


if __name__ == "__main__":
    sys.exit(main())
