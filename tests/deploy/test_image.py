"""The Dockerfile builds on the Ray image of the pinned version and installs rayworker."""

from __future__ import annotations

import re

from tests.deploy.manifests import ROOT, ray_pin

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, flags=re.MULTILINE)
    assert match is not None, f"Dockerfile has no default for ARG {name}"
    return match.group(1)


def test_base_image_is_the_pinned_ray() -> None:
    """Every stage starts from rayproject/ray at the version pyproject.toml pins."""
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert _arg("RAY_VERSION") == ray_pin()
    assert bases
    assert all(b == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}" for b in bases)


def test_python_tag_satisfies_requires_python() -> None:
    """The image's Python (pyNNN tag) is at least the 3.11 that pyproject.toml requires."""
    match = re.fullmatch(r"py3(\d+)", _arg("PYTHON_TAG"))
    assert match is not None
    assert int(match.group(1)) >= 11


def test_image_installs_rayworker_without_replacing_ray() -> None:
    """The final stage installs the wheel under a ray==pin constraint and checks the command."""
    assert 'echo "ray==${RAY_VERSION}"' in DOCKERFILE
    assert "--constraint" in DOCKERFILE
    assert "rayworker --version" in DOCKERFILE
    assert "ENTRYPOINT" not in DOCKERFILE.replace("No ENTRYPOINT", "")


def test_build_context_is_limited_to_the_package() -> None:
    """.dockerignore excludes everything but what the build copies."""
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!rayworker/"]
