"""constraints.txt, the lock that ``make install`` installs with: every dependency pinned, on
every Python lmlab supports, within pyproject.toml's floors, torch (and what its version
decides) left to TORCH_SPEC."""

from __future__ import annotations

import re
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
TORCH_BUILD = re.compile(r"^(torch|triton|setuptools|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _environment(python: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def _pins(python: str) -> dict[str, Version]:
    """The lock's pins that apply on Linux x86-64 with this Python; a package pinned twice
    under markers that both hold would make the file ambiguous."""
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, _, marker = line.partition(" ; ")
        if marker and not Marker(marker).evaluate(_environment(python)):
            continue
        name, version = spec.split("==")
        assert _name(name) not in pins, f"{name} pinned twice for Python {python}"
        pins[_name(name)] = Version(version)
    return pins


def _dependencies() -> list[Requirement]:
    """pyproject.toml's dependencies and extras, from the installed metadata (tomllib is
    Python 3.11's; lmlab runs on 3.10)."""
    return [Requirement(r) for r in requires("lmlab") or []]


@pytest.mark.parametrize("python", PYTHONS)
def test_the_lock_pins_every_dependency_within_its_floor(python: str) -> None:
    pins = _pins(python)
    for requirement in _dependencies():
        name = _name(requirement.name)
        if TORCH_BUILD.match(name):
            continue
        extras = [e for e in ("dev", "cluster") if f'extra == "{e}"' in str(requirement.marker)]
        env = _environment(python) | {"extra": extras[0] if extras else ""}
        if requirement.marker and not requirement.marker.evaluate(env):
            continue
        assert name in pins, f"{requirement} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name]), (
            f"constraints.txt pins {name}=={pins[name]} outside pyproject.toml's {requirement}"
        )


def test_torch_and_its_cuda_packages_are_left_to_torch_spec() -> None:
    """A pin on torch, triton, a CUDA wheel or setuptools, whose range torch sets, would fight
    `make install TORCH_SPEC=...`: torch 2.11 needs setuptools below 82, and the lock held
    84.2.1 (`make install TORCH_SPEC=torch==2.11.0` could not resolve)."""
    for python in PYTHONS:
        assert not [name for name in _pins(python) if TORCH_BUILD.match(name)]
