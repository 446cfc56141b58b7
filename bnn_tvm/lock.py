"""The lock: the one exact version of every Python package bnn-tvm installs, on the host and on the board.

``bnn_tvm/requirements.lock`` (package data: the emulated board and the bundle of an installed bnn-tvm read it) is a
pip requirements file of ``name==version`` lines,
resolved from ``pyproject.toml``'s ranges with every extra, for CPython 3.11 on linux x86-64. ``make``
installs exactly it (``pip install --no-deps``: a package missing from the lock fails the install
instead of being fetched unpinned); the emulated board downloads its aarch64 wheels at the same
versions (``bnn_tvm.board``). ``pyproject.toml`` keeps the ranges a user installing bnn-tvm with pip
can live with; the lock is what the project tests.

``make lock`` runs this file as a script (it needs nothing but pip, so it runs before the venv exists):
it resolves the ranges again and rewrites the lock, for the day someone upgrades on purpose.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

LOCK_FILE = Path(__file__).with_name("requirements.lock")
# The installers are locked too: the venv's pip, and the setuptools and wheel that build the editable
# install (pip's build isolation would fetch them unpinned).
INSTALLERS = ("pip", "setuptools", "wheel")
# The emulated board's packages (bnn_tvm/board.py): TVM's runtime, what its RPC server imports, and the
# TFLite interpreter of `bnn-tvm profile --reference`.
BOARD_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml-dtypes", "typing-extensions", "tornado", "psutil",
                  "cloudpickle", "ai-edge-litert")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


class LockError(RuntimeError):
    """The lock is missing, malformed or lacks a package; the message names the file and the line."""


def normalize(name: str) -> str:
    """PEP 503's form of a package name: ``ml_dtypes`` and ``ML-Dtypes`` are ``ml-dtypes``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """{normalized name: exact version} of every package in the lock."""
    if not path.is_file():
        raise LockError(f"{path}: no lock file (an installed bnn-tvm ships it; in a clone, `make lock` makes it)")
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise LockError(f"{path}:{number}: expected NAME==VERSION, got {line!r}")
        pins[normalize(match[1])] = match[2]
    return pins


def pinned(names, path: Path = LOCK_FILE) -> list[str]:
    """``name==version`` requirements for ``names``, versions from the lock."""
    pins = read_lock(path)
    missing = [name for name in names if normalize(name) not in pins]
    if missing:
        raise LockError(f"{path}: no version for {', '.join(missing)} (add it to pyproject.toml and run `make lock`)")
    return [f"{normalize(name)}=={pins[normalize(name)]}" for name in names]


def requirements(pyproject: Path = Path(__file__).resolve().parent.parent / "pyproject.toml") -> list[str]:
    """pyproject.toml's dependencies with every extra's, as written there (ranges)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def resolve() -> dict[str, str]:
    """Resolve pyproject.toml's ranges, every extra, the installers and the board's packages afresh."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), *requirements(), *INSTALLERS, *BOARD_PACKAGES],
            capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if done.returncode != 0:
            raise LockError(f"pip could not resolve pyproject.toml's dependencies:\n{done.stderr[-3000:]}")
        installs = json.loads(report.read_text())["install"]
    return {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def write_lock(pins: dict[str, str], path: Path = LOCK_FILE) -> None:
    header = (
        "# The exact version of every Python package bnn-tvm installs: the host venv (every extra, and the\n"
        "# installers) and the emulated board's aarch64 wheels. Resolved from pyproject.toml's ranges for\n"
        "# CPython 3.11 on linux x86-64 by `make lock`; do not edit by hand.\n"
    )
    body = "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))
    partial = path.with_name(path.name + ".partial")
    partial.write_text(header + body)
    os.replace(partial, path)


def main() -> int:
    try:
        pins = resolve()
    except LockError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    old = read_lock() if LOCK_FILE.is_file() else {}
    write_lock(pins)
    changed = sorted(name for name in pins.keys() | old.keys() if pins.get(name) != old.get(name))
    for name in changed:
        print(f"{name}: {old.get(name, '(new)')} -> {pins.get(name, '(removed)')}")
    print(f"{LOCK_FILE}: {len(pins)} packages, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
