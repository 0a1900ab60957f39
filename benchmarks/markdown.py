"""BENCHMARKS.md is written by several benchmarks: each owns its `## ` sections and keeps the others'."""

from __future__ import annotations

from pathlib import Path


def sections(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """(the lines before the first `## ` heading, heading -> its lines, heading included), in order."""
    head: list[str] = []
    found: dict[str, list[str]] = {}
    current = head
    for line in text.splitlines():
        if line.startswith("## "):
            current = found.setdefault(line, [])
        current.append(line)
    return head, found


def _join(head: list[str], found: dict[str, list[str]]) -> str:
    blocks = ["\n".join(head).rstrip()] + ["\n".join(lines).rstrip() for lines in found.values()]
    return "\n\n".join(b for b in blocks if b) + "\n"


def replace_section(path: Path, heading: str, lines: list[str]) -> None:
    """Put `lines` (starting with `heading`) in place of that section of `path`, or at its end."""
    head, found = sections(path.read_text() if path.exists() else "# Benchmarks\n")
    found[heading] = lines
    path.write_text(_join(head, found))


def keep_others(path: Path, text: str) -> str:
    """`text` (a whole new file) followed by the sections of the old `path` that it does not write."""
    if not path.exists():
        return text
    new_head, new = sections(text)
    _, old = sections(path.read_text())
    for heading, lines in old.items():
        new.setdefault(heading, lines)
    return _join(new_head, new)


class Section:
    """A `## ` section of a BENCHMARKS file, written as a bench measures it: `add` prints its rows and
    rewrites the section at once, so a bench cut off (a GPU check's time limit) keeps what it measured.
    `lines` starts with the section's heading; text between the tables is added to it directly."""

    def __init__(self, path: Path, lines: list[str]) -> None:
        self.path, self.lines = path, lines

    def add(self, *rows: str) -> None:
        self.lines.extend(rows)
        print("\n".join(rows), flush=True)
        replace_section(self.path, self.lines[0], self.lines)
