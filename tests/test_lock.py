"""The lock: the host venv and the emulated board hold exactly its versions; a board built from another
lock is not used; a board that differs from the host is refused, naming the packages."""

import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig

import pytest
from packaging.requirements import Requirement

from bnn_tvm import board, lock


def test_host_environment_is_exactly_the_lock():
    pins = lock.read_lock()
    # The venv's site-packages only: setuptools puts its vendored packages on sys.path once imported.
    site_packages = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {lock.normalize(dist.metadata["Name"]): dist.version
                 for dist in importlib.metadata.distributions(path=site_packages)}
    installed.pop("bnn-tvm")
    assert {name: version for name, version in installed.items() if pins.get(name) != version} == {}
    assert sorted(pins.keys() - installed.keys()) == []


def test_lock_satisfies_every_range_in_pyproject():
    pins = lock.read_lock()
    for requirement in map(Requirement, lock.requirements()):
        name = lock.normalize(requirement.name)
        assert name in pins, f"{requirement} is in pyproject.toml but not in the lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}"


def test_lock_pins_every_board_package():
    assert [pin.split("==")[0] for pin in lock.pinned(lock.BOARD_PACKAGES)] == list(lock.BOARD_PACKAGES)


def test_real_board_requirements_are_the_locked_versions():
    done = subprocess.run([sys.executable, "-m", "bnn_tvm.cli", "board", "requirements"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == lock.pinned(lock.BOARD_PACKAGES)


def test_malformed_lock_names_file_and_line(tmp_path):
    bad = tmp_path / "requirements.lock"
    bad.write_text("# header\nnumpy==1.26.4\ntornado>=6\n")
    with pytest.raises(lock.LockError, match=r"requirements.lock:3: expected NAME==VERSION, got 'tornado>=6'"):
        lock.read_lock(bad)
    bad.write_text("numpy==1.26.4\n")
    with pytest.raises(lock.LockError, match="no version for apache-tvm"):
        lock.pinned(lock.BOARD_PACKAGES, bad)


def _lock_with(tmp_path, name, version):
    text = lock.LOCK_FILE.read_text()
    old = f"{name}=={lock.read_lock()[name]}\n"
    assert old in text
    path = tmp_path / f"{name}-{version}.lock"
    path.write_text(text.replace(old, f"{name}=={version}\n"))
    return path


def test_board_folder_is_keyed_by_the_boards_pins(tmp_path):
    current = board.board_folder(tmp_path)
    # ml_dtypes 0.7.0 is the release that broke fresh boards: a lock naming it is another board.
    assert board.board_folder(tmp_path, _lock_with(tmp_path, "ml-dtypes", "0.7.0")) != current
    assert board.board_folder(tmp_path, _lock_with(tmp_path, "tornado", "6.4")) != current
    # A host-only package does not change what the board installs.
    assert board.board_folder(tmp_path, _lock_with(tmp_path, "pytest", "8.0.0")) == current


def test_board_installs_exactly_the_locked_versions(emulated_board):
    folder = board.build_emulated_board()
    expected = dict(pin.split("==") for pin in lock.pinned(lock.BOARD_PACKAGES))
    assert board.installed_versions(folder) == expected
    assert (folder / ".ready").read_text().split() == lock.pinned(lock.BOARD_PACKAGES)


def test_board_unlike_the_host_is_refused_naming_each_package(emulated_board, tmp_path):
    """A board whose numpy differs from the host's (its dist-info says so) fails before starting its server."""
    real = board.build_emulated_board()
    fake = board.board_folder(tmp_path)
    (fake / "site").mkdir(parents=True)
    shutil.copy(real / "python-aarch64", fake)
    (fake / ".ready").write_text("built from another lock\n")
    host_numpy = importlib.metadata.version("numpy")
    for entry in (real / "site").iterdir():
        if entry.name == f"numpy-{host_numpy}.dist-info":
            metadata = (entry / "METADATA").read_text().replace(f"Version: {host_numpy}\n", "Version: 1.25.0\n", 1)
            (fake / "site" / "numpy-1.25.0.dist-info").mkdir()
            (fake / "site" / "numpy-1.25.0.dist-info" / "METADATA").write_text(metadata)
        else:
            (fake / "site" / entry.name).symlink_to(entry)
    tracker, _ = emulated_board
    key = "numpy-unlike-host"
    with pytest.raises(board.BoardError, match=rf"numpy {host_numpy} on the host, 1\.25\.0 on the board") as error:
        board.start_emulated_board(tracker, key, port=board.free_port(), cache=tmp_path)
    assert "apache-tvm" not in str(error.value)  # only what differs is named
    assert board.tracker_keys(*board.parse_address(tracker)).get(key, 0) == 0
