"""RPC tracker and boards: the stock TVM RPC server, on a real board or on an emulated one.

The emulated aarch64 board is qemu-user running an aarch64 CPython with the
aarch64 TVM wheel: the same ``python -m tvm.exec.rpc_server`` a Raspberry Pi
runs. Its files (a sysroot of Debian's arm64 packages, the aarch64 wheels) are
built once into a cache folder; nothing is installed system-wide but Debian
packages (qemu-user-static, and the arm64 architecture for apt-get download).
qemu timings rank schedules; they are not ARM hardware times.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

from .cache import board_cache_dir
from .lock import BOARD_PACKAGES, LOCK_FILE, pinned

STATE_DIR = Path(os.environ.get("BNN_TVM_STATE", f"/tmp/bnn-tvm-{os.getuid()}"))
# Holds one folder per emulated board, named by a hash of what it is built from (see board_folder).
BOARD_CACHE = board_cache_dir()
QEMU = "qemu-aarch64-static"
PYTHON = "python3.11"
# arm64 Debian packages that make a working CPython 3.11 with the libraries TVM's runtime loads.
DEBIAN_PACKAGES = (
    "python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libstdc++6 libgcc-s1 zlib1g libffi8 "
    "libexpat1 libssl3 libbz2-1.0 libcrypt1 liblzma5 libsqlite3-0 libuuid1 libgomp1 libtinfo6 libncursesw6 "
    "libreadline8 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 "
    "libcom-err2 libdb5.3"
).split()
# These must equal the host's: the board loads what the host's TVM compiled, and the RPC protocol and
# the tensors it carries are theirs.
MUST_MATCH_HOST = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml-dtypes")
# The wheel tags the board's CPython 3.11 and glibc 2.36 accept (pip matches each tag as given, not older ones).
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
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
            _reap(pid)
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child and has exited: a zombie still answers kill(pid, 0)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


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
    summary = tracker_summary(f"{host}:{port}")
    return {key: info.get("free", 0) for key, info in summary.get("queue_info", {}).items()}


def registered_boards(host: str, port: int, key: str) -> list[tuple[str, int]]:
    """The addresses of the servers registered under ``key`` at the tracker, free or busy (a busy server keeps
    its tracker connection while it serves a session, so it stays listed until it dies)."""
    summary = tracker_summary(f"{host}:{port}")
    return [tuple(s["addr"]) for s in summary.get("server_info", []) if s.get("key") == f"server:{key}"]


# ------------------------------------------------------------------ sessions through a tracker
#
# TVM's own client (rpc.connect_tracker(...).request(key)) retries a refused connection for a minute, logging
# "retry in 5 secs", and waits for a board of the key with no time limit: a wrong key hangs silently. These
# speak the tracker's protocol (tvm.rpc.base: magic, then length-prefixed JSON) on a socket with time limits.

# Seconds to reach a tracker and for it to answer one question: it answers at once unless it is not a tracker.
TRACKER_TIMEOUT = 5.0
# Seconds a board the tracker handed out has to accept the session: it answers at once unless its address is not
# reachable from here (a board that registered a private address) or it died after the tracker matched it.
BOARD_CONNECT_TIMEOUT = 60.0
# While waiting for a free board, how often to check that the key still has boards registered.
_POLL = 2.0


def _tracker_socket(host: str, port: int) -> socket.socket:
    """A socket to the tracker at ``host:port`` after the tracker handshake, or BoardError naming why not."""

    def unreachable(reason: str) -> BoardError:
        return BoardError(f"cannot reach the RPC tracker at {host}:{port}: {reason}")

    try:
        sock = socket.create_connection((host, port), timeout=TRACKER_TIMEOUT)
    except ConnectionRefusedError:
        raise unreachable("connection refused") from None
    except TimeoutError:
        raise unreachable(f"no answer within {TRACKER_TIMEOUT:g} s") from None
    except socket.gaierror as err:
        raise unreachable(f"unknown host ({err.strerror})") from None
    except OSError as err:
        raise unreachable((err.strerror or str(err)).lower()) from None
    from tvm.rpc import base  # after the connection: a dead tracker is named without waiting for TVM to import

    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except TimeoutError:
        sock.close()
        raise unreachable(f"it is not an RPC tracker (no answer to the tracker handshake within "
                          f"{TRACKER_TIMEOUT:g} s)") from None
    except OSError:  # recvall raises IOError("connection reset") when the peer closes
        sock.close()
        raise unreachable("it is not an RPC tracker (it closed the connection at the tracker handshake)") from None
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise unreachable("it is not an RPC tracker (wrong answer to the tracker handshake)")
    return sock


def _send(sock: socket.socket, address: str, message: list) -> None:
    from tvm.rpc import base

    try:
        sock.settimeout(TRACKER_TIMEOUT)
        base.sendjson(sock, message)
    except OSError as err:
        raise BoardError(f"the RPC tracker at {address} closed the connection ({err})") from None


def _receive(sock: socket.socket, address: str):
    """The tracker's next message, which it sends within TRACKER_TIMEOUT."""
    from tvm.rpc import base

    try:
        sock.settimeout(TRACKER_TIMEOUT)
        return base.recvjson(sock)
    except TimeoutError:
        raise BoardError(f"the RPC tracker at {address} did not answer within {TRACKER_TIMEOUT:g} s") from None
    except OSError as err:
        raise BoardError(f"the RPC tracker at {address} closed the connection ({err})") from None


def tracker_summary(tracker: str) -> dict:
    """The tracker's ``summary()`` (``queue_info``: {key: {free, pending}}, ``server_info``: [{key, addr}]),
    asked within a few seconds.

    Raises
    ------
    BoardError
        ``cannot reach the RPC tracker at HOST:PORT: connection refused`` (or the reason), at once.
    """
    from tvm.rpc.base import TrackerCode

    host, port = parse_address(tracker)
    with _tracker_socket(host, port) as sock:
        _send(sock, f"{host}:{port}", [TrackerCode.SUMMARY])
        answer = _receive(sock, f"{host}:{port}")
    if not isinstance(answer, list) or answer[:1] != [TrackerCode.SUCCESS]:
        raise BoardError(f"the RPC tracker at {host}:{port} gave a summary it should not: {answer!r}")
    return answer[1]


def served_keys(summary: dict) -> dict[str, tuple[int, int]]:
    """{key: (boards registered, boards free)} of a tracker's ``summary()``, for keys with a board registered
    (the queue also lists keys that were only ever asked for)."""
    totals: dict[str, int] = {}
    for server in summary.get("server_info", []):
        kind, _, key = str(server.get("key", "")).partition(":")
        if kind == "server":
            totals[key] = totals.get(key, 0) + 1
    queue = summary.get("queue_info", {})
    return {key: (total, min(total, queue.get(key, {}).get("free", 0))) for key, total in sorted(totals.items())}


def _what_it_serves(summary: dict) -> str:
    served = served_keys(summary)
    if not served:
        return "it serves no board"
    return "it serves: " + ", ".join(f"{key!r} ({total} board{'s' * (total != 1)}, {free} free)"
                                     for key, (total, free) in served.items())


def _not_registered(tracker: str, key: str, summary: dict) -> BoardError:
    return BoardError(f"no board of key {key!r} is registered at the RPC tracker {tracker}; "
                      f"{_what_it_serves(summary)}")


def check_key_served(tracker: str, key: str, timeout: float = 0.0) -> int:
    """The number of boards registered under ``key`` at ``tracker`` (``HOST:PORT``), free or busy; waits up to
    ``timeout`` seconds for one to register (0: asks once). For the start of a run that needs the key's boards,
    so that a wrong key or a dead tracker fails at once rather than at the first measurement.

    Raises
    ------
    BoardError
        If the tracker cannot be reached (at once), or no board of ``key`` is registered, naming the keys the
        tracker serves with their boards and free boards.
    """
    host, port = parse_address(tracker)
    address = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        summary = tracker_summary(address)
        boards = served_keys(summary).get(key, (0, 0))[0]
        if boards:
            return boards
        if time.monotonic() + 0.5 > deadline:
            if timeout > 0:
                raise BoardError(f"no board of key {key!r} registered at the RPC tracker {address} within "
                                 f"{timeout:g} s; {_what_it_serves(summary)}")
            raise _not_registered(address, key, summary)
        time.sleep(0.5)


def request_session(tracker: str, key: str, timeout: float = 30.0, session_timeout: int = 600):
    """An RPC session on a free board of ``key`` registered at ``tracker`` (``HOST:PORT``), waiting at most
    ``timeout`` seconds for one to be free. ``session_timeout``: seconds the board serves the session.

    The same session as TVM's ``rpc.connect_tracker(host, port).request(key, session_timeout=...)``, without
    its minute of retries against a dead tracker and its unbounded wait for a key nobody serves.

    Raises
    ------
    BoardError
        At once if the tracker cannot be reached (``cannot reach the RPC tracker at HOST:PORT: REASON``) or has
        no board of ``key`` registered; after ``timeout`` seconds if none became free, or as soon as the key's
        last board is gone; if the board the tracker handed out does not accept the session. The messages name
        the key and what the tracker serves (keys with their boards and free boards).
    """
    from tvm import rpc
    from tvm.rpc.base import TrackerCode

    if not timeout > 0:
        raise ValueError(f"the RPC timeout must be a positive number of seconds, got {timeout}")
    host, port = parse_address(tracker)
    address = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    summary = tracker_summary(address)
    if key not in served_keys(summary):
        raise _not_registered(address, key, summary)
    with _tracker_socket(host, port) as sock:
        _send(sock, address, [TrackerCode.REQUEST, key, "", 1])  # what TrackerSession.request sends
        # The tracker answers when a board of the key is free; closing the socket withdraws the request.
        while not select.select([sock], [], [], max(0.0, min(_POLL, deadline - time.monotonic())))[0]:
            summary = tracker_summary(address)
            if key not in served_keys(summary):
                raise BoardError(f"the boards of key {key!r} left the RPC tracker {address} while waiting for "
                                 f"one to be free; {_what_it_serves(summary)}")
            if time.monotonic() >= deadline:
                raise BoardError(f"no board of key {key!r} at the RPC tracker {address} became free within "
                                 f"{timeout:g} s; {_what_it_serves(summary)}")
        answer = _receive(sock, address)
    if not isinstance(answer, list) or answer[:1] != [TrackerCode.SUCCESS]:
        raise BoardError(f"the RPC tracker at {address} refused the request for key {key!r}: {answer!r}")
    board_host, board_port, matchkey = answer[1]
    outcome = {}

    def connect():
        try:
            outcome["session"] = rpc.connect(board_host, board_port, matchkey, session_timeout)
        except Exception as err:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = err

    # TVM's connect is one C++ call that cannot be interrupted; a board that does not answer costs a thread.
    waiter = threading.Thread(target=connect, daemon=True)
    waiter.start()
    waiter.join(BOARD_CONNECT_TIMEOUT)
    board = f"{board_host}:{board_port}"
    if waiter.is_alive():
        raise BoardError(f"the board of key {key!r} at {board} (from the RPC tracker {address}) did not accept "
                         f"the session within {BOARD_CONNECT_TIMEOUT:g} s; is that address reachable from here?")
    if "error" in outcome:
        reason = next((line.strip() for line in str(outcome["error"]).splitlines() if line.strip()), "")
        raise BoardError(f"the board of key {key!r} at {board} (from the RPC tracker {address}) refused the "
                         f"session: {reason or type(outcome['error']).__name__}") from outcome["error"]
    return outcome["session"]


class _BelowLevel(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


# TVM's RPC loggers: "RPCServer" (tvm.rpc.base: the client's "Cannot connect to tracker ..., retry in 5 secs",
# and the server's) and "RPCTracker". Each has its own stderr handler and does not propagate.
RPC_LOGGERS = ("RPCServer", "RPCTracker")


def quiet_rpc_logging(level: int = logging.ERROR) -> None:
    """Drop TVM's RPC log records below ``level`` (its retry warnings) in this process, for a command line that
    is not verbose: bnn-tvm says what went wrong in its own error line. Imports nothing of TVM.

    A filter rather than a level: importing ``tvm.rpc`` sets these loggers' levels (to INFO) itself.
    """
    for name in RPC_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _BelowLevel)]:
            logger.removeFilter(old)
        logger.addFilter(_BelowLevel(level))


# ------------------------------------------------------------------ emulated board


def board_folder(cache: Path = BOARD_CACHE, lock: Path = LOCK_FILE) -> Path:
    """Where the emulated board built from ``lock`` lives: a folder named by a hash of its pinned wheels and
    Debian packages, so a board built from another lock is never reused."""
    recipe = "\n".join([*pinned(BOARD_PACKAGES, lock), PYTHON, *DEBIAN_PACKAGES])
    return cache / f"aarch64-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def build_emulated_board(cache: Path = BOARD_CACHE, lock: Path = LOCK_FILE) -> Path:
    """The emulated aarch64 board's folder (sysroot, site-packages, launcher), built once into ``cache``."""
    folder = board_folder(cache, lock)
    if (folder / ".ready").exists():
        return folder
    if shutil.which(QEMU) is None:
        raise BoardError(f"{QEMU} is missing: apt-get install qemu-user-static (make test installs it)")
    if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                                     text=True).stdout.split():
        raise BoardError("apt cannot fetch arm64 packages: dpkg --add-architecture arm64 && apt-get update")
    wheels = pinned(BOARD_PACKAGES, lock)
    # Built beside its place and renamed into it when complete: an interrupted build leaves nothing that looks ready.
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    debs, sysroot, downloads, site = (partial / d for d in ("debs", "sysroot", "wheels", "site"))
    for path in (debs, downloads, site):
        path.mkdir(parents=True)
    _run(["apt-get", "download", *(f"{p}:arm64" for p in DEBIAN_PACKAGES)], cwd=debs, what="arm64 packages")
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(sysroot)], what=f"unpacking {deb.name}")
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps", "--python-version",
          "3.11", *(arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)), "-d", str(downloads),
          *wheels], what="aarch64 wheels")
    for wheel in sorted(downloads.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    launcher = partial / "python-aarch64"
    launcher.write_text(f'#!/bin/sh\nexec {QEMU} -L "{folder / "sysroot"}" "{folder / "sysroot"}/usr/bin/{PYTHON}" "$@"\n')
    launcher.chmod(0o755)
    # The RPC server re-executes sys.executable; without binfmt_misc the kernel cannot run an aarch64
    # binary, so point it at the launcher.
    (site / "sitecustomize.py").write_text(f"import sys\nsys.executable = {str(folder / launcher.name)!r}\n")
    (partial / ".ready").write_text("".join(f"{wheel}\n" for wheel in wheels))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder


def installed_versions(folder: Path, names=BOARD_PACKAGES) -> dict[str, str | None]:
    """{name: version} of packages as the board's own Python sees them installed (None: not installed)."""
    script = ("import sys, importlib.metadata as m\n"
              "for name in sys.argv[1:]:\n"
              "    try: print(name, m.version(name))\n"
              "    except m.PackageNotFoundError: print(name, '-')\n")
    done = subprocess.run([str(folder / "python-aarch64"), "-c", script, *names], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(folder / "site")}, timeout=300)
    if done.returncode != 0:
        raise BoardError(f"the emulated board in {folder} cannot run Python:\n{done.stderr[-2000:]}")
    versions = dict(line.split() for line in done.stdout.splitlines())
    return {name: None if versions[name] == "-" else versions[name] for name in names}


def check_matches_host(folder: Path) -> None:
    """Fail, naming each package and both versions, unless the board's TVM, TVM FFI, numpy and ml_dtypes are
    the host's: a board that differs cannot run what the host compiles (or cannot even start its server)."""
    on_board = installed_versions(folder, MUST_MATCH_HOST)
    differences = [f"{name} {host_version(name)} on the host, {on_board[name] or 'not installed'} on the board"
                   for name in MUST_MATCH_HOST if on_board[name] != host_version(name)]
    if differences:
        raise BoardError(f"the emulated board in {folder} does not match the host: {'; '.join(differences)}. "
                         "Install the host from the lock (make clean && make venv) or delete that folder to rebuild it")


def host_requirements() -> list[str]:
    """``name==version`` of every board package at the host's version: what a real board installs."""
    return [f"{name}=={host_version(name)}" for name in BOARD_PACKAGES]


def host_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(argv, what: str, cwd=None) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BoardError(f"building the emulated board failed at {what}:\n{done.stderr[-2000:]}")


def start_emulated_board(tracker: str, key: str, port: int = 9090, host: str = "127.0.0.1",
                         cache: Path = BOARD_CACHE, count: int = 1) -> list[int]:
    """Start ``count`` emulated aarch64 boards registered with ``tracker`` under one ``key`` (board i tries ports
    from ``port + i`` on); return their pids, once every one is registered. Emulated boards already running under
    ``key`` are stopped first."""
    if count < 1:
        raise BoardError(f"count must be at least 1, got {count}")
    tracker_host, tracker_port = parse_address(tracker)
    if not _accepts(tracker_host, tracker_port):
        raise BoardError(f"no tracker at {tracker}: start one with `bnn-tvm tracker start --port {tracker_port}`")
    folder = build_emulated_board(cache)
    check_matches_host(folder)
    site = folder / "site"
    env = {**os.environ, "PYTHONPATH": str(site), "TVM_USE_RUNTIME_LIB": "1"}
    stop_board(key)
    names = [f"{key}@{i}" for i in range(count)]
    processes = [_spawn("board", name, [
        str(folder / "python-aarch64"), "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port + i),
        "--port-end", str(port + i + 100), "--tracker", tracker, "--key", key,
        # without it MetaSchedule's measurements fail (random_fill_for_measure is missing)
        "--load-library", str(site / "tvm" / "lib" / "libtvm_runtime_extra.so")], env) for i, name in enumerate(names)]
    deadline = time.monotonic() + READY_TIMEOUT
    waiting = dict(zip(names, processes, strict=True))
    try:
        while True:
            # Ready: the tracker lists the port the board's log says it bound (other servers may share the key).
            ports = {p for _, p in registered_boards(tracker_host, tracker_port, key)}
            waiting = {name: process for name, process in waiting.items() if _bound_port(name) not in ports}
            if not waiting:
                return [process.pid for process in processes]
            failed = next((name for name, process in waiting.items() if process.poll() is not None), None)
            if failed or time.monotonic() > deadline:
                failed = failed or next(iter(waiting))
                raise BoardError(f"the emulated board {failed!r} did not register with {tracker} within "
                                 f"{READY_TIMEOUT:.0f} s:\n{_log_tail('board', failed)}")
            time.sleep(0.5)
    except BaseException:
        stop_board(key)
        raise


def _bound_port(name: str) -> int | None:
    path = STATE_DIR / f"board-{name}.log"
    found = re.search(r"bind to \S+:(\d+)", path.read_text(errors="replace")) if path.exists() else None
    return int(found.group(1)) if found else None


def _board_names(key: str) -> list[str]:
    """The emulated boards started under ``key``, in the order they were started (``key`` alone: an older one)."""
    pattern = re.compile(re.escape(key) + r"(@(\d+))?")
    found = [(m.group(2) or "-1", m.string) for f in STATE_DIR.glob("board-*.pid")
             if (m := pattern.fullmatch(f.name[len("board-"):-len(".pid")]))]
    return [name for _, name in sorted(found, key=lambda item: int(item[0]))]


def board_logs(key: str) -> list[Path]:
    """The server logs of the emulated boards running under ``key``, in the order they were started."""
    return [STATE_DIR / f"board-{name}.log" for name in _board_names(key)]


def stop_board(key: str) -> int:
    """Stop every emulated board started under ``key``; return how many were running."""
    return sum(_stop("board", name) for name in _board_names(key))
