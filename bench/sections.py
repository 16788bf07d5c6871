"""
Writing a benchmark's table into docs/benchmarks.md, between its markers.
"""

from __future__ import annotations


def writeSection(path: str, begin: str, end: str, text: str) -> None:
    """
    Replace what lies between C{begin} and C{end} in the file at C{path}
    with C{text}.
    """
    with open(path, encoding="utf-8") as f:
        document = f.read()
    before, rest = document.split(begin, 1)
    _, after = rest.split(end, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{before}{begin}\n{text}\n{end}{after}")
