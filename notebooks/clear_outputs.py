"""Clear outputs and execution counts of notebooks before committing them.

    python notebooks/clear_outputs.py [NOTEBOOK.ipynb ...]   (default: every notebook here)

A test (tests/unit/test_notebooks.py) refuses notebooks stored with outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def clear(path: Path) -> bool:
    """Strip one notebook in place; True when it changed."""
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs = []
            cell.execution_count = None
            changed = True
    if changed:
        nbformat.write(notebook, path)
    return changed


def main(argv: list[str]) -> int:
    """Clear the notebooks named (or all of notebooks/); print the ones changed."""
    paths = [Path(a) for a in argv] or sorted(Path(__file__).parent.glob("*.ipynb"))
    for path in paths:
        if clear(path):
            print(f"cleared {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
