"""The ``/bin/generic-packager`` script written into bootstrap images (reference §5.8.1).

The builder drives every distribution's package manager through this one
script (``generic-packager install <pkgs…>``, ``list``, ``run <prog>``…); a
``PackagerTypes`` entry of the main configuration says what each sub-command
runs. The text is the Go daemon's, byte for byte, with one fix: single quotes
inside a quoted argument are escaped, where Go wrote a script that did not
parse.
"""

from __future__ import annotations

from collections.abc import Sequence

from imaginator.config.main import PackagerType

_HEADER = ("#! /bin/sh", "# Created by imaginator.")
_TRAILER = ('echo "Invalid command: $cmd"', "exit 2")


def generic_packager_script(ptype: PackagerType) -> str:
    """The text of ``/bin/generic-packager`` for packager type ``ptype``."""
    lines = [*_HEADER, *ptype.verbatim, 'cmd="$1"; shift']
    lines.append(_command_line("clean", ptype.clean_command))
    lines.append('[ "$cmd" = "copy-in" ] && exec cat > "$1"')
    lines.append(_command_line("install", ptype.install_command))
    lines.append(_command_line("list", ptype.list_command.arg_list))
    lines.append(_command_line("remove", ptype.remove_command))
    lines.append('[ "$cmd" = "run" ] && exec "$@"')
    lines += _clean_patterns_block(ptype.clean_patterns)
    multiplier = max(ptype.list_command.size_multiplier, 1)
    lines.append(f'[ "$cmd" = "show-size-multiplier" ] && exec echo {multiplier}')
    lines.append(_command_line("update", ptype.update_command))
    lines.append(_command_line("upgrade", ptype.upgrade_command))
    lines += _TRAILER
    return "".join(line + "\n" for line in lines)


def _command_line(name: str, argv: Sequence[str]) -> str:
    """``[ "$cmd" = "<name>" ] && exec <argv> "$@"``, or a no-op for an empty argv."""
    test = f'[ "$cmd" = "{name}" ] &&'
    if not argv:
        return f"{test} exit 0"
    words = "".join(" " + quote_argument(arg) for arg in argv)
    return f'{test} exec{words} "$@"'


def _clean_patterns_block(patterns: Sequence[str]) -> list[str]:
    block = ['if [ "$cmd" = "show-clean-patterns" ]; then']
    block += [f"    echo {single_quote(pattern)}" for pattern in patterns]
    block += ["    exit 0", "fi"]
    return block


def quote_argument(arg: str) -> str:
    """One packager-command argument as the Go daemon writes it (escaping fixed).

    A single word is written as it is (it is shell text, as in Go); anything
    with two or more words is single-quoted, its one trailing newline written
    as the two characters ``\\n`` (the ``dpkg-query -f`` format relies on that).
    An argument with an embedded newline is quoted too: written as it is, it
    would split the script's line in two.
    """
    if len(arg.split()) < 2 and "\n" not in arg:
        return arg
    if arg.endswith("\n"):
        arg = arg[:-1] + "\\n"
    return single_quote(arg)


def single_quote(text: str) -> str:
    """``text`` in single quotes for ``sh``, each ``'`` written as ``'\\''``."""
    return "'" + text.replace("'", "'\\''") + "'"
