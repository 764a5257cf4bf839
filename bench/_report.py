"""Shared by the benchmarks: print a rich table and keep docs/benchmarks.md up to date."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Measured, never asserted: each section is written by the benchmark named in it,
with the command that produced it. Machines here are shared and noisy, so each
benchmark compares ratios within one run rather than absolute times across runs.
"""


def show(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(key: str, title: str, command: str, body: str) -> None:
    """Replace (or add) the section `key` of docs/benchmarks.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, Python {platform.python_version()}"
    section = (
        f"<!-- {key}:start -->\n## {title}\n\nCommand: `{command}`  \n"
        f"Measured: {stamp} on {machine}.\n\n{body.strip()}\n<!-- {key}:end -->"
    )
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- {key}:start -->.*?<!-- {key}:end -->", re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else (text.rstrip() + "\n\n" + section + "\n")
    )
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
