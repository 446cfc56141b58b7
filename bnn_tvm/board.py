"""RPC tracker and boards: the stock TVM RPC server, on a real board or on an emulated one.

The emulated aarch64 board is qemu-user running an aarch64 CPython with the
aarch64 TVM wheel: the same ``python -m tvm.exec.rpc_server`` a Raspberry Pi
runs. Its files (a sysroot of Debian's arm64 packages, the aarch64 wheels) are
built once into a cache folder; nothing is installed system-wide but Debian
packages (qemu-user-static, and the arm64 architecture for apt-get download).
qemu timings rank schedules; they are not ARM hardware times.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

STATE_DIR = Path(os.environ.get("BNN_TVM_STATE", f"/tmp/bnn-tvm-{os.getuid()}"))
BOARD_CACHE = Path(os.environ.get("BNN_TVM_BOARD_CACHE", Path.home() / ".cache" / "bnn-tvm" / "board-aarch64"))
QEMU = "qemu-aarch64-static"
PYTHON = "python3.11"
# arm64 Debian packages that make a working CPython 3.11 with the libraries TVM's runtime loads.
DEBIAN_PACKAGES = (
    "python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libstdc++6 libgcc-s1 zlib1g libffi8 "
    "libexpat1 libssl3 libbz2-1.0 libcrypt1 liblzma5 libsqlite3-0 libuuid1 libgomp1 libtinfo6 libncursesw6 "
    "libreadline8 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 "
    "libcom-err2 libdb5.3"
).split()
# The same pins as the host (see pyproject.toml): the board's runtime must match the compiler.
WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy<2", "ml_dtypes", "typing_extensions",
          "tornado", "psutil", "cloudpickle")
READY_TIMEOUT = 120.0


class BoardError(RuntimeError):
    """A tracker or board could not be started, reached or stopped; the message says why and what to do."""


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise BoardError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


# ------------------------------------------------------------------ processes


def _pidfile(kind: str, name: str) -> Path:
    return STATE_DIR / f"{kind}-{name}.pid"


def _spawn(kind: str, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log = open(STATE_DIR / f"{kind}-{name}.log", "wb")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _pidfile(kind, name).write_text(str(process.pid))
    return process


def _log_tail(kind: str, name: str, lines: int = 15) -> str:
    path = STATE_DIR / f"{kind}-{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _stop(kind: str, name: str) -> bool:
    pidfile = _pidfile(kind, name)
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return True


# ------------------------------------------------------------------ tracker


def start_tracker(port: int, host: str = "127.0.0.1") -> int:
    """Start TVM's RPC tracker in the background; return once it accepts connections."""
    if _accepts(host, port):
        raise BoardError(f"something already listens on {host}:{port}; stop it or pick another --port")
    process = _spawn("tracker", str(port), [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host,
                                             "--port", str(port), "--port-end", str(port + 1)])
    deadline = time.monotonic() + 30
    while not _accepts(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop("tracker", str(port))
            raise BoardError(f"the tracker did not start on {host}:{port}:\n{_log_tail('tracker', str(port))}")
        time.sleep(0.2)
    return process.pid


def stop_tracker(port: int) -> bool:
    return _stop("tracker", str(port))


def free_port() -> int:
    """A TCP port nothing listens on now (for tests and demos that start their own tracker)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tracker_keys(host: str, port: int) -> dict:
    """The tracker's queue: {key: free servers}."""
    from tvm import rpc

    summary = rpc.connect_tracker(host, port).summary()
    return {key: info.get("free", 0) for key, info in summary.get("queue_info", {}).items()}


# ------------------------------------------------------------------ emulated board


def build_emulated_board(cache: Path = BOARD_CACHE) -> Path:
    """The emulated aarch64 board's files (sysroot, site-packages, launcher), built once into ``cache``."""
    launcher = cache / "python-aarch64"
    if (cache / ".ready").exists():
        return launcher
    if shutil.which(QEMU) is None:
        raise BoardError(f"{QEMU} is missing: apt-get install qemu-user-static (make test installs it)")
    if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                                     text=True).stdout.split():
        raise BoardError("apt cannot fetch arm64 packages: dpkg --add-architecture arm64 && apt-get update")
    debs, sysroot, wheels, site = (cache / d for d in ("debs", "sysroot", "wheels", "site"))
    for folder in (debs, wheels, site):
        folder.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", *(f"{p}:arm64" for p in DEBIAN_PACKAGES)], cwd=debs, what="arm64 packages")
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(sysroot)], what=f"unpacking {deb.name}")
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps", "--python-version",
          "3.11", "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64", "-d", str(wheels),
          *WHEELS], what="aarch64 wheels")
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    launcher.write_text(f'#!/bin/sh\nexec {QEMU} -L "{sysroot}" "{sysroot}/usr/bin/{PYTHON}" "$@"\n')
    launcher.chmod(0o755)
    # The RPC server re-executes sys.executable; without binfmt_misc the kernel cannot run an aarch64
    # binary, so point it at the launcher.
    (site / "sitecustomize.py").write_text(f"import sys\nsys.executable = {str(launcher)!r}\n")
    (cache / ".ready").write_text("ok\n")
    return launcher


def _run(argv, what: str, cwd=None) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BoardError(f"building the emulated board failed at {what}:\n{done.stderr[-2000:]}")


def start_emulated_board(tracker: str, key: str, port: int = 9090, host: str = "127.0.0.1",
                         cache: Path = BOARD_CACHE) -> int:
    """Start an emulated aarch64 board registered with ``tracker`` as ``key``; return when it is ready."""
    tracker_host, tracker_port = parse_address(tracker)
    if not _accepts(tracker_host, tracker_port):
        raise BoardError(f"no tracker at {tracker}: start one with `bnn-tvm tracker start --port {tracker_port}`")
    launcher = build_emulated_board(cache)
    site = cache / "site"
    env = {**os.environ, "PYTHONPATH": str(site), "TVM_USE_RUNTIME_LIB": "1"}
    argv = [str(launcher), "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port), "--port-end",
            str(port + 100), "--tracker", tracker, "--key", key,
            # without it MetaSchedule's measurements fail (random_fill_for_measure is missing)
            "--load-library", str(site / "tvm" / "lib" / "libtvm_runtime_extra.so")]
    _stop("board", key)
    process = _spawn("board", key, argv, env)
    deadline = time.monotonic() + READY_TIMEOUT
    while tracker_keys(tracker_host, tracker_port).get(key, 0) < 1:
        if process.poll() is not None or time.monotonic() > deadline:
            _stop("board", key)
            raise BoardError(f"the emulated board {key!r} did not register with {tracker} within "
                             f"{READY_TIMEOUT:.0f} s:\n{_log_tail('board', key)}")
        time.sleep(0.5)
    return process.pid


def stop_board(key: str) -> bool:
    return _stop("board", key)
