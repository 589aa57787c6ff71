"""Print the requirement lines of pyproject.toml's core dependencies plus the given extras.

``python3 scripts/requirements.py [EXTRAS]`` (comma-separated, e.g. ``models,s3``): used by the
Dockerfile (stdlib only: it runs on the base image's python before anything is installed) and by
``scripts/docker_smoke.sh`` for the wheelhouse. An unknown extra exits 1 naming the valid ones.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(extras: str, pyproject: Path) -> list[str]:
    """The core dependencies followed by those of each extra in ``extras`` (comma-separated)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    names = [e.strip() for e in extras.split(",") if e.strip()]
    unknown = [e for e in names if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; valid: {', '.join(sorted(optional))}")
    return list(project["dependencies"]) + [d for e in names for d in optional[e]]


if __name__ == "__main__":
    here = Path(__file__).resolve().parent.parent / "pyproject.toml"
    pyproject = here if here.is_file() else Path("pyproject.toml")
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "", pyproject)))
