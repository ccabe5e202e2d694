"""Command line and the one exit point of every run.

``python -m inforge_action <command> [--input value ...]`` (also the
``inforge-action`` script, and the container's entrypoint). Each input is
a flag of the same name or an ``INPUT_*`` variable; a flag wins.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TextIO

from .spec import COMMANDS, INPUTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inforge-action",
        description=(
            "Ship a service to plain Linux VMs: push immutable releases to "
            "R2, deploy them over SSH with verified restarts, roll back."
        ),
        epilog=(
            "Every flag can also come from INPUT_<NAME> (upper-cased, "
            "hyphens kept), as a GitHub runner passes it. Pass secrets "
            "through the environment, not flags."
        ),
    )
    parser.add_argument(
        "command", nargs="?", choices=COMMANDS, help="what to do"
    )
    for name, spec in INPUTS.items():
        if name == "command":
            continue
        default = f" (default: {spec.default})" if spec.default else ""
        parser.add_argument(
            f"--{name}",
            dest=name,
            metavar="VALUE",
            help=spec.help + default,
        )
    return parser


@contextmanager
def cancellable(cancel: threading.Event) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a request to stop between hosts.

    GitHub cancels a job with SIGINT, then SIGTERM about 7.5 s later, then
    kills it. No new host starts after the first signal; a host in the
    middle of its switch finishes or reverts, so none is left half done.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(number: int, _frame) -> None:
        # Printing here could re-enter a print the signal interrupted;
        # the rollout reports the cancellation from its own loop.
        cancel.set()

    previous = {
        number: signal.signal(number, request_stop)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one command; a known error becomes an annotation and exit 1."""
    code, _ = execute(argv, os.environ if environ is None else environ)
    return code


def execute(
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    stream: TextIO | None = None,
):
    """Run one command; return the exit code and the reporter."""
    args = vars(build_parser().parse_args(argv))

    from .errors import ActionError
    from .inputs import load_inputs, read_runner
    from .report import Reporter

    reporter = Reporter(read_runner(environ), stream)
    for name, spec in INPUTS.items():
        value = args.get(name) or environ.get(f"INPUT_{name.upper()}", "")
        if spec.secret and value:
            reporter.mask(value)
    try:
        inputs = load_inputs(environ, args)
        for secret in inputs.secrets:
            reporter.mask(secret)
        from .commands import run

        cancel = threading.Event()
        with reporter.logging_attached(), cancellable(cancel):
            run(inputs, reporter, cancel)
    except ActionError as error:
        reporter.error(str(error), title=error.title)
        reporter.add_summary(f"### ❌ {error.title}\n\n{error}\n")
        return 1, reporter
    return 0, reporter


if __name__ == "__main__":
    sys.exit(main())
