"""The ``clearml-hooks`` console entry point.

``clearml-hooks run ...`` starts the command without importing click (about half of what
``run`` adds to a program's start); anything it does not parse plainly (``--help``, an unknown
option, a bad value) and every other command go to the click CLI, which owns usage and errors.
"""

from __future__ import annotations

import sys

_OPTIONS = {"--project": "project", "--task-name": "task_name", "--frameworks": "frameworks",
            "--output-uri": "output_uri"}


def parse_run(args: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """``[OPTIONS] [--] CMD ...`` -> (options, command); None when click should handle it."""
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-"):
            break
        name, eq, value = arg.partition("=")
        if name not in _OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        options[_OPTIONS[name]] = value
        i += 1
    command = args[i:]
    return (options, command) if command else None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    parsed = parse_run(args[1:]) if args[:1] == ["run"] else None
    if parsed is not None:
        from clearml_hooks.launch.run import CommandNotStarted, exit_like, run_command

        options, command = parsed
        try:
            returncode = run_command(command, **options)
        except ValueError:
            pass  # nothing started: click reports it, in the CLI's words
        except CommandNotStarted as exc:
            print(f"clearml-hooks: error: {exc}", file=sys.stderr)
            sys.exit(exc.status)
        else:
            sys.exit(exit_like(returncode))
    from clearml_hooks.cli import main as cli_main

    cli_main(args)
