"""Fail when a function in src/ runs over 80 lines; print the longest either way.

A function's length is from its ``def`` (decorators excluded) to its last line,
as Python's ``ast`` reports them. Written here because ruff has no rule that
counts lines (its PLR0915 counts statements, which a long call or literal
evades).

    python scripts/check_function_length.py [ROOT] [--limit 80] [--show 5]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def function_lengths(root: Path) -> list[tuple[int, str, str]]:
    """(lines, "path:line", qualified name) of every function under ``root``, longest first."""
    found: list[tuple[int, str, str]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found.extend(_lengths(tree, path, ""))
    return sorted(found, key=lambda row: (-row[0], row[1]))


def _lengths(node: ast.AST, path: Path, prefix: str) -> list[tuple[int, str, str]]:
    rows: list[tuple[int, str, str]] = []
    for child in ast.iter_child_nodes(node):
        name = f"{prefix}{getattr(child, 'name', '')}"
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = (child.end_lineno or child.lineno) - child.lineno + 1
            rows.append((lines, f"{path}:{child.lineno}", name))
            rows.extend(_lengths(child, path, f"{name}."))
        elif isinstance(child, ast.ClassDef):
            rows.extend(_lengths(child, path, f"{name}."))
        else:
            rows.extend(_lengths(child, path, prefix))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="src/tunelens", type=Path)
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--show", type=int, default=5)
    args = parser.parse_args(argv)
    rows = function_lengths(args.root)
    over = [row for row in rows if row[0] > args.limit]
    print(f"longest functions under {args.root} (limit {args.limit} lines):")
    for lines, where, name in over or rows[: args.show]:
        print(f"  {lines:4d}  {name}  ({where})")
    if over:
        print(f"{len(over)} function(s) over {args.limit} lines", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
