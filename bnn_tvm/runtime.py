"""Run compiled artifacts: load a .so and call it with numpy arrays."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import struct

import numpy as np
import tvm
from tvm import relax

from .signature import LEGACY_SIGNATURE_FUNCTION, SIGNATURE_FUNCTION, Signature
from .signature import InputError  # noqa: F401 - what calls raise, importable from here


class CompiledModel:
    """A loaded bnn-tvm .so: call it with numpy arrays, get numpy arrays back."""

    def __init__(self, module, device=None, path=None):
        self.device = device or tvm.cpu()
        self.path = path
        try:
            self.vm = relax.VirtualMachine(module, self.device)
        except AttributeError:  # "Module has no function 'vm_load_executable'"
            raise LibraryError(f"{path}: is not a bnn-tvm model (a shared library without a Relax executable); "
                               f"make one with `bnn-tvm compile MODEL -o model.so`") from None
        self._main = self.vm["main"]
        self._signature = None

    def __call__(self, *inputs: np.ndarray, **named: np.ndarray):
        """The model's outputs (one array, or a list for several) for ``inputs`` in the model's order, or
        ``named`` by input name (see ``signature``), after checking each input's shape and dtype.

        Raises
        ------
        InputError
            A ``ValueError`` naming the input that is missing, unknown or of the wrong shape or dtype, and what
            the model takes.
        """
        args = self._device_inputs(inputs, named)
        if getattr(self, "session", None) is None:
            return _to_numpy(self._main(*args))
        # Over RPC a tuple of outputs comes back as a handle Python cannot iterate: the VM's stateful calls
        # fetch the outputs one by one.
        self.vm.set_input("main", *args)
        self.vm.invoke_stateful("main")
        return _remote_outputs(self.vm, ())

    def _device_inputs(self, inputs, named) -> list:
        signature = self.signature()
        arrays = signature.arrange(inputs, named)
        signature.check(arrays)
        return [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in arrays]

    def signature(self) -> Signature:
        """Names, shapes and dtypes of the model's inputs and outputs, as ``bnn_tvm.compile`` recorded them."""
        if self._signature is None:
            # A .so of bnn-tvm before 0.4 recorded its inputs only, under another name.
            for name in (SIGNATURE_FUNCTION, LEGACY_SIGNATURE_FUNCTION):
                try:
                    recorded = self.vm[name]
                except AttributeError:
                    continue
                self._signature = Signature.from_json(str(recorded()))
                break
            else:
                raise LibraryError(f"{self.path}: is not a bnn-tvm model (it records no signature: a Relax "
                                   f"executable built by TVM itself?); compile it with `bnn-tvm compile`")
        return self._signature

    def input_signature(self) -> tuple[tuple[int, ...], str]:
        """Shape and dtype of the first input."""
        first = self.signature().inputs[0]
        return first.shape, first.dtype

    def threads(self) -> int:
        """Threads the model's kernels run on (on the board, for a remote model)."""
        return int(self._runtime_function("runtime.NumThreads")())

    def _runtime_function(self, name: str):
        session = getattr(self, "session", None)
        return session.get_function(name) if session else tvm.get_global_func(name)

    def time(self, *inputs: np.ndarray, repeat: int = 10, **named: np.ndarray) -> list[float]:
        """Seconds of ``repeat`` calls, measured on the device (over RPC, without the RPC round trip)."""
        args = self._device_inputs(inputs, named)
        self._main(*args)  # warm up: first-touch of weights and the thread pool
        timer = self.vm.time_evaluator("main", self.device, number=1, repeat=repeat)
        return list(timer(*args).results)


def _remote_outputs(vm, index: tuple):
    """The outputs of the last ``invoke_stateful("main")`` at ``index`` as numpy arrays (nested tuples as lists).

    Not ``VirtualMachine.get_outputs``: its recursive closure is a reference cycle holding the VM, so the RPC
    session, and the board with it, stays taken until the garbage collector happens to run."""
    arity = vm._get_output_arity("main", *index)
    if arity == -1:
        return vm._get_output("main", *index).numpy()
    return [_remote_outputs(vm, (*index, i)) for i in range(arity)]


def _to_numpy(value):
    if isinstance(value, tvm.runtime.Tensor):
        return value.numpy()
    return [_to_numpy(v) for v in value]  # a tuple of outputs


class LibraryError(ValueError):
    """A .so that cannot be loaded here: not a complete ELF shared library, or built for another machine."""


ELF_MACHINES = {3: "x86", 62: "x86-64", 40: "32-bit ARM", 183: "aarch64", 243: "riscv"}
_HOST_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "armv7l": 40, "i686": 3, "riscv64": 243}
_ET_DYN, _SHT_NOBITS = 3, 8


def check_library(path: str | os.PathLike, machine: int | None = -1) -> os.PathLike:
    """``path`` after checking that it is a complete ELF shared library for ``machine`` (an ELF ``e_machine``;
    -1: this machine's, None: any): its header, program headers, every segment's file range, the section
    header table and every section lie within the file.

    ``dlopen`` maps a file without checking its size: a .so cut short (an interrupted copy) then dies with
    SIGBUS when the loader touches a page past its end, killing the process instead of raising.

    Raises
    ------
    LibraryError
        Naming the file and what is wrong: "truncated or not a shared library: ..." or "built for aarch64,
        this machine is x86-64".
    """
    from .frontend.model_file import checked_model_file

    path = checked_model_file(path)
    with open(path, "rb") as f:
        data = f.read()  # a .so is at most a few hundred MB (weights inside) and is about to be mapped anyway

    def broken(why: str) -> LibraryError:
        return LibraryError(f"{path}: truncated or not a shared library: {why}")

    if data[:4] != b"\x7fELF":
        raise broken(f"no ELF header (starts with {data[:4]!r})")
    if len(data) < 64 or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise broken(f"its ELF header is incomplete or invalid ({len(data)} bytes)")
    bits64, order = data[4] == 2, "<" if data[5] == 1 else ">"
    header = struct.unpack_from(order + ("HHIQQQIHHHHHH" if bits64 else "HHIIIIIHHHHHH"), data, 16)
    e_type, e_machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = header
    if e_type != _ET_DYN:
        raise broken(f"ELF type {e_type}, not a shared object ({_ET_DYN})")
    if machine == -1:
        machine = _HOST_MACHINES.get(platform.machine().lower())
    if machine is not None and e_machine != machine:
        raise LibraryError(f"{path}: built for {ELF_MACHINES.get(e_machine, f'ELF machine {e_machine}')}, this "
                           f"machine is {ELF_MACHINES.get(machine, f'ELF machine {machine}')}: compile it with "
                           f"--target host, or run it on its board (--rpc-tracker, --rpc-key)")
    size = len(data)

    def table(what, offset, count, entry, minimum, fields):
        if count and (entry < minimum or offset + count * entry > size):
            raise broken(f"its {what} table ({count} x {entry} bytes at byte {offset}) ends past the end of "
                         f"the file ({size} bytes)")
        return [struct.unpack_from(order + fields, data, offset + i * entry) for i in range(count)]

    program = table("program header", phoff, phnum, phentsize, 56 if bits64 else 32,
                    "IIQQQQ" if bits64 else "IIIIII")
    if not program:
        raise broken("it has no program headers")
    for i, entry in enumerate(program):
        # 64-bit: type, flags, offset, vaddr, paddr, filesz; 32-bit: type, offset, vaddr, paddr, filesz, memsz
        offset, filesz = (entry[2], entry[5]) if bits64 else (entry[1], entry[4])
        if offset + filesz > size:
            raise broken(f"segment {i} (bytes {offset}..{offset + filesz}) ends past the end of the file "
                         f"({size} bytes)")
    sections = table("section header", shoff, shnum, shentsize, 64 if bits64 else 40,
                     "IIQQQQ" if bits64 else "IIIIII")
    for i, entry in enumerate(sections):
        # name, type, flags, addr, offset, size (the same order in both classes)
        kind, offset, length = entry[1], entry[4], entry[5]
        if kind != _SHT_NOBITS and offset + length > size:
            raise broken(f"section {i} (bytes {offset}..{offset + length}) ends past the end of the file "
                         f"({size} bytes)")
    return path


def load(path: str | os.PathLike, threads: int | None = None) -> CompiledModel:
    """Load a .so made by ``bnn_tvm.compile(...).export_library(path)`` on this machine.

    Kernels run on one thread per physical core unless ``threads`` (or an earlier ``set_threads``) says otherwise.

    Raises
    ------
    LibraryError
        If ``path`` is not a complete shared library for this machine (see ``check_library``).
    """
    path = check_library(path)
    if threads is not None or not _pool_configured:
        set_threads(threads)
    # TVM picks its loader by the file's extension; check_library has found a shared library whatever its name.
    # dlopen searches the library path for a name without a slash: the file named is the one loaded.
    library = tvm.get_global_func("ffi.Module.load_from_file.so")(os.path.abspath(path), "so")
    return CompiledModel(library, path=path)


def load_remote(path: str | os.PathLike, tracker: str, key: str, session_timeout: int = 600,
                threads: int | None = None, timeout: float = 30.0) -> CompiledModel:
    """Upload a .so to a board reached through an RPC tracker (``HOST:PORT``) and load it there.

    ``threads``: run on that many of the board's cores (default: the board server's own setting).
    ``timeout``: seconds to wait for a board of ``key`` to be free (``board.request_session``).
    The file is checked to be a complete shared library before uploading (a truncated one would kill the
    board's server); its architecture is the board's to check, as bnn-tvm does not know the board's.

    Raises
    ------
    BoardError
        At once if the tracker cannot be reached or no board of ``key`` is registered there, after ``timeout``
        seconds if none became free: naming the tracker, the key and the keys the tracker serves.
    """
    from .board import request_session

    check_library(path, machine=None)
    session = request_session(tracker, key, timeout=timeout, session_timeout=session_timeout)
    session.upload(os.fspath(path))
    model = CompiledModel(session.load_module(os.path.basename(path)), session.cpu(), path=path)
    model.session = session  # keep the connection alive as long as the model
    if threads is not None:  # a board is its own process: TVM's default affinity (big cores first) suits it
        model._runtime_function("runtime.config_threadpool")(_BIG_CORES, threads)
    return model


# TVM's affinity modes (threading_backend.h): every worker may run on every CPU of a given list; or one worker
# per core, fastest cores first.
_SHARE_ALL_CORES, _BIG_CORES = -3, 1


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads of one core count once).

    TVM's own default, half the logical CPUs on x86, assumes two hyper-threads per core; a VM whose vCPUs are
    separate cores (``thread_siblings_list`` of one CPU each) then gets half its cores.
    """
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:  # no sysfs topology (containers, some boards): every CPU is a core
            cores.add(("cpu", str(cpu)))
    return max(len(cores), 1)


# What TVM reads from the environment when it makes or reconfigures its thread pool: the pool's size, fixed for
# the process once made (TVM's default, half the logical CPUs on x86, assumes two hyper-threads per core), and
# whether to pin threads, which in TVM's default configuration binds the calling thread to CPU 0 and with it
# every thread that LCE, TFLite or numpy start afterwards in this process. bnn-tvm sets them for its own calls
# only (a value the user exported wins) and restores the caller's environment afterwards.
def _pool_environment() -> dict[str, str]:
    return {"TVM_NUM_THREADS": str(physical_cores()), "TVM_BIND_THREADS": "0"}


@contextlib.contextmanager
def _defaults_in_environment(defaults: dict[str, str]):
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


_pool_configured = False


def set_threads(n: int | None = None) -> int:
    """Run TVM kernels on ``n`` threads (default: one per physical core); returns the number in use.

    TVM's thread pool is one per process (per calling thread, strictly), made on the first parallel kernel or
    this call with one worker per physical core, and never resized: ``n`` above that uses them all, and idle
    workers still take CPU time now and then, so a process that wants fewer threads says so before its first run
    (``load(path, threads=n)``). The workers may run on every CPU this process may use.
    """
    global _pool_configured
    n = physical_cores() if n is None else n
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    cpus = sorted(os.sched_getaffinity(0))[:n]  # sizes the worker set; binds nothing (TVM_BIND_THREADS=0)
    with _defaults_in_environment(_pool_environment()):
        tvm.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, n, [str(c) for c in cpus])
    _pool_configured = True
    return threads()


def threads() -> int:
    """Threads TVM kernels run on now."""
    return int(tvm.get_global_func("runtime.NumThreads")())


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3
