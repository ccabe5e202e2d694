"""The README's inputs and outputs tables, generated from spec.py.

    python scripts/gen_tables.py                  print both tables
    python scripts/gen_tables.py --write FILE...  refresh them in place
    python scripts/gen_tables.py --check FILE...  exit 1 when one is stale

A file holds each table between the marker comments
``<!-- inputs:start -->`` and ``<!-- inputs:end -->`` (and the same for
``outputs``); the text outside the markers is left as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inforge_action.spec import INPUTS, OUTPUTS  # noqa: E402


SECTIONS = ("inputs", "outputs")


def _cell(text: str) -> str:
    # Markdown would take <service> for an HTML tag and | for a column.
    for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(raw, escaped)
    return text.replace("|", "\\|").replace("\n", " ")


def inputs_table() -> str:
    """Every input with its default; secrets say so."""
    lines = ["| Input | Default | Description |", "|---|---|---|"]
    for name, spec in INPUTS.items():
        shown = spec.runner_default or spec.default
        default = f"`{shown}`" if shown else ""
        required = "**Required.** " if name == "command" else ""
        secret = " Masked in the log." if spec.secret else ""
        description = _cell(f"{required}{spec.help}.{secret}")
        lines.append(f"| `{name}` | {default} | {description} |")
    return "\n".join(lines)


def outputs_table() -> str:
    lines = ["| Output | Holds |", "|---|---|"]
    for name, text in OUTPUTS.items():
        lines.append(f"| `{name}` | {_cell(text)}. |")
    return "\n".join(lines)


def tables() -> dict[str, str]:
    return {"inputs": inputs_table(), "outputs": outputs_table()}


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


def has_markers(text: str) -> bool:
    return all(m in text for s in SECTIONS for m in markers(s))


def render(text: str) -> str:
    """``text`` with the current tables between its markers."""
    for section, table in tables().items():
        start, end = markers(section)
        pattern = re.compile(
            re.escape(start) + r".*?" + re.escape(end), re.DOTALL
        )
        if not pattern.search(text):
            raise ValueError(f"the markers {start} ... {end} are missing")
        text = pattern.sub(
            lambda _, t=table, s=start, e=end: f"{s}\n{t}\n{e}", text
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="refresh files")
    mode.add_argument("--check", action="store_true", help="find stale ones")
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)

    if not args.files:
        print(inputs_table() + "\n\n" + outputs_table())
        return 0
    stale = []
    for path in args.files:
        text = path.read_text()
        fresh = render(text)
        if fresh == text:
            continue
        if args.write:
            path.write_text(fresh)
            print(f"refreshed {path}")
        else:
            stale.append(str(path))
    if stale:
        print(
            "stale tables in " + ", ".join(stale) + "; run python "
            "scripts/gen_tables.py --write " + " ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
