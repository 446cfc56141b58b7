"""What each kernel of a bnn-tvm build costs: its time inside the model on this machine (``per_kernel``) and
the binary multiply-accumulates one call computes (``binary_macs``, which the ARM instruction counter uses too).
"""

from __future__ import annotations

import time


def binary_macs(kernel: str, args: list) -> int:
    r"""Binary multiply-accumulates of one call of a binary kernel, from its arguments' [shape, dtype].

    Parameters
    ----------
    kernel
        The kernel's name; only ``bconv2d`` and ``bdense`` kernels compute binary MACs (0 for others).
    args
        ``[shape, dtype]`` of each argument: the packed input first, the filter second, the output last.

    Returns
    -------
    int
        bconv2d, with input ``[N, H, W, Cin/32]`` packed, output ``[N, OH, OW, Cout]`` (``Cout/32`` words when the
        output is packed int32), filter ``[Cout, KH, KW, Cin/32/groups]`` or, repacked for NEON,
        ``[Cout/32, KH, KW, 32, Cin/32 rounded up to 4 words]``:

        .. math:: N \cdot OH \cdot OW \cdot C_{out} \cdot KH \cdot KW \cdot C_{in} / groups

        bdense, with input ``[N, K/32]`` and output ``[N, Cout]``: :math:`N \cdot C_{out} \cdot K`.

    Notes
    -----
    Channels count in whole 32-bit words, as the kernels process them; a grouped NEON filter whose groups are
    under 4 words deep counts as one group (its padding hides the group count).
    """
    (x, _), (w, _), (out, out_dtype) = args[0], args[1], args[-1]
    cout = out[-1] * (32 if out_dtype == "int32" else 1)
    if "bconv2d" in kernel:
        groups = max(x[-1] // w[-1], 1)
        return out[0] * out[1] * out[2] * cout * w[1] * w[2] * x[-1] * 32 // groups
    if "bdense" in kernel:
        return out[0] * cout * x[-1] * 32
    return 0


def per_kernel(compiled, inputs, runs: int = 10) -> list[dict]:
    """Each kernel of a loaded bnn-tvm build: calls and milliseconds per inference, binary MACs per inference.

    ``compiled``: a ``runtime.CompiledModel`` on this machine; ``inputs``: the model's inputs in its order (a list
    of arrays; one array for a one-input model).

    Timed by the VM's instrument hook around each kernel call, so the interpreter's own overhead between
    kernels is left out; largest first. The first call records calls and shapes and is not timed.
    """
    import numpy as np
    import tvm

    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    macs: dict[str, int] = {}
    started: dict[str, float] = {}
    recording = [True]

    def instrument(_func, name, before, _ret, *args):
        if name.startswith("vm."):
            return 0
        if before:
            if recording[0]:
                shapes = [[list(a.shape), str(a.dtype)] for a in args if hasattr(a, "shape")]
                calls[name] = calls.get(name, 0) + 1
                macs[name] = macs.get(name, 0) + (binary_macs(name, shapes) if len(shapes) >= 3 else 0)
            started[name] = time.perf_counter()
        else:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started[name]
        return 0

    inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    compiled.signature().check(inputs)
    device_inputs = [tvm.runtime.tensor(np.ascontiguousarray(x), compiled.device) for x in inputs]
    compiled.vm.set_instrument(instrument)
    compiled.vm["main"](*device_inputs)
    recording[0] = False
    totals.clear()
    for _ in range(runs):
        compiled.vm["main"](*device_inputs)
    rows = [{"kernel": name, "calls": calls[name], "ms": total / runs * 1e3, "binary_macs": macs.get(name, 0)}
            for name, total in totals.items()]
    return sorted(rows, key=lambda row: -row["ms"])
