"""The one place that prints: logs, annotations, outputs and the summary.

On a GitHub runner it speaks workflow commands (``::group::``,
``::warning::``, ``::add-mask::``) and writes ``GITHUB_OUTPUT`` and
``GITHUB_STEP_SUMMARY``; on a laptop it prints plain text. Secrets are
masked before the first line is printed and redacted from every line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from .inputs import Runner


REDACTED = "***"


class Reporter:
    """Prints for one run; library modules log, this class speaks."""

    def __init__(self, runner: Runner, stream: TextIO | None = None):
        self.runner = runner
        self.stream = stream or sys.stdout
        self.error_stream = stream or sys.stderr
        self.outputs: dict[str, str] = {}
        self._secrets: list[str] = []
        self._summary: list[str] = []

    def mask(self, secret: str) -> None:
        """Hide ``secret`` from every later line, one line at a time."""
        for line in secret.splitlines() or [secret]:
            line = line.strip()
            if len(line) < 4 or line in self._secrets:
                continue
            self._secrets.append(line)
            if self.runner.is_actions:
                self._write(f"::add-mask::{line}")
        self._secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def info(self, message: str) -> None:
        self._write(self.redact(message))

    def debug(self, message: str) -> None:
        if self.runner.is_actions:
            self._command("debug", message)

    def warning(self, message: str, title: str = "") -> None:
        if self.runner.is_actions:
            self._command("warning", message, title)
        else:
            self._write(self.redact(f"warning: {message}"))

    def error(self, message: str, title: str = "") -> None:
        if self.runner.is_actions:
            self._command("error", message, title)
        else:
            self._write(self.redact(f"error: {message}"), self.error_stream)

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        if self.runner.is_actions:
            self._write(f"::group::{self.redact(title)}")
        else:
            self._write(f"==> {self.redact(title)}")
        started = time.monotonic()
        try:
            yield
        finally:
            self._write(f"    {time.monotonic() - started:.2f} s")
            if self.runner.is_actions:
                self._write("::endgroup::")

    def set_output(self, name: str, value: object) -> None:
        """Record a step output; lists and dicts become JSON."""
        text = value if isinstance(value, str) else json.dumps(value)
        text = self.redact(text)
        self.outputs[name] = text
        if self.runner.output_path:
            import github_action_utils

            github_action_utils.set_output(name, text)
        else:
            self._write(f"output {name}={text}")

    def add_summary(self, markdown: str) -> None:
        """Append a section to the job summary (kept for the laptop too)."""
        markdown = self.redact(markdown)
        self._summary.append(markdown)
        if self.runner.summary_path:
            import github_action_utils

            github_action_utils.append_job_summary(markdown + "\n")

    @property
    def summary(self) -> str:
        return "\n".join(self._summary)

    @contextmanager
    def logging_attached(self) -> Iterator[None]:
        """Route the package's ``logging`` records through this reporter."""
        logger = logging.getLogger("inforge_action")
        handler = _ReporterHandler(self)
        saved = logger.level, logger.propagate
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]

    def _command(self, kind: str, message: str, title: str = "") -> None:
        # Workflow command data escapes %, CR and LF; properties also , :
        data = _escape(self.redact(message))
        properties = ""
        if title:
            properties = " title=" + _escape(self.redact(title), True)
        self._write(f"::{kind}{properties}::{data}")

    def _write(self, line: str, stream: TextIO | None = None) -> None:
        print(line, file=stream or self.stream, flush=True)


def _escape(text: str, is_property: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if is_property:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


class _ReporterHandler(logging.Handler):
    def __init__(self, reporter: Reporter):
        super().__init__()
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.reporter.warning(message)
        elif record.levelno >= logging.INFO:
            self.reporter.info(message)
        else:
            self.reporter.debug(message)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain, aligned text table for the log."""
    table = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in table
    )


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]]
) -> str:
    """A Markdown table for the job summary; pipes in cells are escaped."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "---|" * len(headers))
    for row in rows:
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines)


def host_lines(results: Sequence) -> str:
    """One Markdown bullet per host result: host, result and detail."""
    return "\n".join(
        f"- {r.host}: {r.result}" + (f": {r.detail}" if r.detail else "")
        for r in results
    )
