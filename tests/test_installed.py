"""bnn-tvm as a user gets it: the wheel, installed with the locked versions into a fresh virtualenv (no
TensorFlow), every headline command run from a folder outside the repository with a new user cache; then the
``[larq]`` extra and a Keras model."""

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bnn_tvm import board, lock, zoo

from .test_bundle import CASE, on_board_python, under_qemu
from .test_keras import RTOL as KERAS_RTOL
from .test_keras import _small_binary_model
from .test_zoo import RTOL

REPO = Path(__file__).resolve().parent.parent
QUICKNET = zoo.ZooCase("QuickNet-224-logits", "QuickNet")  # test_pretuned's cached model


@dataclass
class Installed:
    wheel: Path
    venv: Path
    env: dict  # a user's: the venv's bin on PATH, nothing of the repository, an empty cache under HOME
    cwd: Path  # outside the repository
    cache: Path  # where bnn-tvm should put what it builds on first use

    def cli(self, *args, timeout=900) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / "bnn-tvm"), *map(str, args)], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def pip_install(self, *requirements) -> None:
        done = subprocess.run([str(self.venv / "bin" / "python"), "-m", "pip", "install", "-q",
                               "--disable-pip-version-check", *requirements], capture_output=True, text=True,
                              timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]


def _checked(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"{done.args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _du(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("installed")
    # The wheel is built from a copy of the sources with this venv's locked setuptools and wheel (no build
    # isolation: nothing is fetched unpinned), so the checkout gets no build/ or egg-info.
    source = work / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                               "__pycache__", ".pytest_cache"))
    _checked(subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=600))
    (wheel,) = (work / "dist").glob("bnn_tvm-*.whl")
    venv = work / "venv"
    _checked(subprocess.run([sys._base_executable, "-m", "venv", str(venv)], capture_output=True, text=True,
                            timeout=300))
    user = Installed(wheel, venv, {}, work / "elsewhere", work / "home" / ".cache" / "bnn-tvm")
    user.pip_install("--no-deps", *lock.pinned(lock.INSTALLERS))
    user.pip_install(str(wheel), "-c", str(lock.LOCK_FILE))
    user.cwd.mkdir()
    user.env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(work / "home"),
                # The emulated board is ~300 MB: the one this test session uses (same lock, so the same folder).
                "BNN_TVM_BOARD_CACHE": str(board.BOARD_CACHE)}
    return user


def test_the_wheel_carries_what_commands_read_and_installs_exactly_the_lock(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    for needed in ("bnn_tvm/requirements.lock", "bnn_tvm/runner/bnn_run.cc", "bnn_tvm/runner/embed_example.cc",
                   "bnn_tvm/armprofile/insn_count.c", "bnn_tvm/tune_logs/rpi4-a72-cycles/database_workload.json",
                   "bnn_tvm/relay_ops/bconv2d.py", "bnn_tvm/schedules/arm_cpu/intrin.py"):
        assert needed in names, f"{needed} is not in {installed.wheel.name}"
    site = next((installed.venv / "lib").glob("python3*/site-packages"))
    dists = {lock.normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=[str(site)])}
    pins = lock.read_lock()
    assert {n: v for n, v in dists.items() if n != "bnn-tvm" and pins.get(n) != v} == {}, "versions not in the lock"
    assert not [n for n in dists if n.startswith(("tensorflow", "nvidia-"))], sorted(dists)
    print(f"\nwheel {installed.wheel.stat().st_size / 2**20:.2f} MB; installed {_du(installed.venv) / 2**20:.0f} MB "
          f"({len(dists)} distributions)")


def test_help_is_there_and_a_host_build_runs_bit_exact_with_lce(installed):
    assert "compile" in _checked(installed.cli("--help"))
    model = zoo.cached_tflite(CASE)
    _checked(installed.cli("compile", model, "--target", "host", "-o", "host.so"))
    x = zoo.random_input((1, CASE.size, CASE.size, CASE.channels_in), seed=5)
    np.save(installed.cwd / "x.npy", x)
    _checked(installed.cli("run", "host.so", "--input", "x.npy", "--output", "y.npy"))
    np.testing.assert_array_equal(np.load(installed.cwd / "y.npy"), zoo.lce_interpreter(model).predict(x))


def test_rpi4_build_takes_the_shipped_schedules_and_its_bundle_runs_under_qemu(installed, tmp_path):
    """QuickNet for rpi4 from the installed package: the pre-tuned database is the wheel's, the bundle (runtime
    from the board's locked wheels, ``bnn-run`` built into the user's cache) runs with no Python, bit for bit
    what the board's Python computes and within float rounding of LCE."""
    model = zoo.cached_tflite(QUICKNET, builder=zoo.keras_logits_model)
    out = _checked(installed.cli("compile", model, "--target", "rpi4", "-o", "q.so", "--bundle", "q-rpi4"))
    tuned = re.search(r"(\d+) of (\d+) kernels use the pre-tuned schedules bnn-tvm ships for rpi4 \((.*?);", out)
    assert tuned, out
    assert int(tuned[1]) >= 12 and Path(tuned[3]).is_relative_to(installed.venv), out  # the wheel's database
    assert list((installed.cache / "runners").glob("bnn-run-aarch64-*"))
    x = zoo.random_input((1, 224, 224, 3))
    np.save(tmp_path / "x.npy", x)
    under_qemu(installed.cwd / "q-rpi4", tmp_path, "--input", tmp_path / "x.npy", "--output", "y_qemu.npy")
    y = np.load(tmp_path / "y_qemu.npy")
    np.testing.assert_array_equal(y, on_board_python(installed.cwd / "q-rpi4" / "model.so", [tmp_path / "x.npy"],
                                                     tmp_path)[0])
    lce = zoo.lce_interpreter(model).predict(x)
    assert np.abs(y - lce).max() <= RTOL * max(1.0, float(np.abs(lce).max()))


def test_profile_builds_its_plugin_on_first_use(installed):
    _checked(installed.cli("compile", zoo.cached_tflite(CASE), "--target", "rpi4", "-o", "small-rpi4.so"))
    out = _checked(installed.cli("profile", "small-rpi4.so", "--emulate", "aarch64"))
    assert "bconv2d" in out and "per inference" in out, out
    assert list((installed.cache / "plugins").glob("insn_count-*.so"))


def test_board_start_and_run_over_rpc(installed):
    port, key = board.free_port(), "installed-test"
    tracker = f"127.0.0.1:{port}"
    _checked(installed.cli("tracker", "start", "--port", port))
    try:
        _checked(installed.cli("board", "start", "--emulate", "aarch64", "--tracker", tracker, "--key", key,
                               "--port", board.free_port()))
        x = zoo.random_input((1, CASE.size, CASE.size, CASE.channels_in), seed=5)
        np.save(installed.cwd / "x.npy", x)
        _checked(installed.cli("run", "small-rpi4.so", "--rpc-tracker", tracker, "--rpc-key", key,
                               "--input", "x.npy", "--output", "y-board.npy"))
        np.testing.assert_array_equal(np.load(installed.cwd / "y-board.npy"),
                                      zoo.lce_interpreter(zoo.cached_tflite(CASE)).predict(x))
    finally:
        installed.cli("board", "stop", "--key", key)
        installed.cli("tracker", "stop", "--port", port)


def test_a_two_trial_tune_writes_records_compile_uses(installed):
    model = zoo.cached_tflite(CASE)
    _checked(installed.cli("tune", model, "--target", "host", "--trials", "2", "--no-compare", "--log", "run"))
    records = (installed.cwd / "run" / "database_tuning_record.json").read_text().splitlines()
    assert records and all(json.loads(line)[1][1] for line in records)  # every record has its times
    out = _checked(installed.cli("compile", model, "--target", "host", "-o", "tuned.so", "--tuning-records", "run"))
    assert re.search(r"[1-9]\d* of \d+ kernels use tuned schedules from run", out), out


def test_a_keras_model_compiles_after_installing_the_larq_extra(installed, tmp_path):
    model = _small_binary_model()
    model.save(tmp_path / "model.h5")
    refused = installed.cli("compile", tmp_path / "model.h5", "-o", "keras.so")
    assert refused.returncode == 1 and refused.stderr.count("error:") == 1, refused.stderr
    assert "[larq]" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    installed.pip_install(f"{installed.wheel}[larq]", "-c", str(lock.LOCK_FILE))
    out = installed.cli("compile", tmp_path / "model.h5", "-o", "keras.so")
    _checked(out)
    assert "tensorflow" not in out.stderr.lower(), out.stderr  # TensorFlow's start-up lines stay hidden
    x = zoo.random_input((1, *model.input_shape[1:]))
    np.save(installed.cwd / "xk.npy", x)
    _checked(installed.cli("run", "keras.so", "--input", "xk.npy", "--output", "yk.npy"))
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.load(installed.cwd / "yk.npy"), expected, rtol=0,
                               atol=KERAS_RTOL * max(1.0, float(np.abs(expected).max())))
