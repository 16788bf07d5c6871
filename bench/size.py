"""
The size of Python source, as the tutorial counts it: lines that are not
blank, not comments and not docstrings.

    python bench/size.py examples/likes/likes examples/likes/pyproject.toml
    python bench/size.py examples/likes/tests

Prints each file's count and the total; TOML files count their non-blank,
non-comment lines.
"""

from __future__ import annotations

import ast
import io
import os
import sys
import tokenize


def docstringLines(source: str) -> set[int]:
    """
    The line numbers docstrings take.
    """
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def pythonLines(source: str) -> int:
    """
    Lines holding code: a token other than a comment, outside docstrings.
    """
    skip = docstringLines(source)
    code: set[int] = set()
    ignored = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
    }
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in ignored:
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - skip)


def otherLines(source: str) -> int:
    return sum(
        1 for line in source.splitlines() if line.strip() and not line.strip().startswith("#")
    )


def files(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, names in sorted(os.walk(path)):
                found += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
        else:
            found.append(path)
    return found


def main(paths: list[str]) -> int:
    total = 0
    for path in files(paths):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        count = pythonLines(source) if path.endswith(".py") else otherLines(source)
        total += count
        print(f"{count:5d}  {path}")
    print(f"{total:5d}  total")
    return total


if __name__ == "__main__":
    main(sys.argv[1:])
