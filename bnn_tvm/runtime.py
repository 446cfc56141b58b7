"""Run compiled artifacts: load a .so and call it with numpy arrays."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics

import numpy as np
import tvm
from tvm import relax

from .elf import ET_DYN, MACHINES, ElfError, ElfFile
from .signature import LEGACY_SIGNATURE_FUNCTION, SIGNATURE_FUNCTION, Signature


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
        signature.InputError
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


_HOST_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "armv7l": 40, "i686": 3, "riscv64": 243}


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
    try:
        library = ElfFile.read(path)  # a .so is about to be mapped anyway
        if library.type != ET_DYN:
            raise ElfError(f"ELF type {library.type}, not a shared object ({ET_DYN})")
        if machine == -1:
            machine = _HOST_MACHINES.get(platform.machine().lower())
        if machine is not None and library.machine != machine:
            raise LibraryError(f"{path}: built for {MACHINES.get(library.machine, f'ELF machine {library.machine}')}, "
                               f"this machine is {MACHINES.get(machine, f'ELF machine {machine}')}: compile it with "
                               f"--target host, or run it on its board (--rpc-tracker, --rpc-key)")
        if not library.segments():
            raise ElfError("it has no program headers")
        library.sections()
    except ElfError as err:
        raise LibraryError(f"{path}: truncated or not a shared library: {err}") from None
    return path


def load(path: str | os.PathLike, threads: int | None = None) -> CompiledModel:
    """Load a .so made by ``bnn_tvm.compile(...).export_library(path)`` on this machine.

    TVM's thread pool is one per process, shared by every model loaded in it. The first ``load`` makes it with
    ``threads`` workers (default: one per physical core), unless ``set_threads`` made it before; later loads use
    it as it is, and ``threads`` is then only checked: resizing the pool would change every loaded model's
    threads, which is ``set_threads``' to do, explicitly.

    Raises
    ------
    LibraryError
        If ``path`` is not a complete shared library for this machine (see ``check_library``).
    ValueError
        If ``threads`` is below 1, or differs from the size of the pool this process already configured.
    """
    path = check_library(path)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if _pool_threads is None:
        set_threads(threads)
    elif threads is not None and threads != _pool_threads:
        raise ValueError(f"threads={threads}: TVM's thread pool, which every model loaded in this process shares, "
                         f"is already configured for {_pool_threads}; bnn_tvm.runtime.set_threads({threads}) "
                         "resizes it for all of them")
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


_pool_threads: int | None = None  # the size bnn-tvm configured the pool with; None: not yet


def set_threads(n: int | None = None) -> int:
    """Run TVM kernels on ``n`` threads (default: one per physical core); returns the number in use.

    TVM's thread pool is one per process (per calling thread, strictly), shared by every model loaded in it: this
    call sizes it for all of them. It is made on the first parallel kernel or the first configuration with one
    worker per physical core (the environment TVM reads then is set for that moment only, see
    ``_pool_environment``), and its workers never grow: ``n`` above that uses them all, and idle workers still
    take CPU time now and then, so a process that wants fewer threads says so before its first run
    (``load(path, threads=n)``, or this call). The workers may run on every CPU this process may use.
    """
    global _pool_threads
    n = physical_cores() if n is None else n
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    cpus = sorted(os.sched_getaffinity(0))[:n]  # sizes the worker set; binds nothing (TVM_BIND_THREADS=0)
    with _defaults_in_environment(_pool_environment()):
        tvm.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, n, [str(c) for c in cpus])
    _pool_threads = n
    return threads()


def threads() -> int:
    """Threads TVM kernels run on now."""
    return int(tvm.get_global_func("runtime.NumThreads")())


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3
