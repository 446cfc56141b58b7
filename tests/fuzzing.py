"""bnn-tvm's own fuzzer: mutated LCE .tflite files and Keras files through `bnn-tvm compile`, each in its own
process with a time limit, classified by what the compiler did.

    python -m tests.fuzzing --cases N --seed S [--families bytes,flatbuffer,keras] [--jobs J] [--keep DIR]

Mutators (all seeded by ``--seed``, in tests/fuzz_mutators.py): byte flips, truncations, insertions and zeroed
ranges of real LCE files; structure-aware edits through TFLite's flatbuffer object API; Keras: corrupted
.h5/.keras bytes and edited .keras configs.

Each case runs ``bnn_tvm.cli.main(["compile", ...])`` in a process forked from a worker that has imported
bnn-tvm once (a fresh interpreter costs ~10 s of imports, the compile of these models ~1 s), killed after
``--timeout`` seconds. Outcomes:

- compiled: the .so ran on a seeded random input and agreed with the reference: LCE's interpreter on the
  mutated file (Keras on the mutated Keras file); bit for bit when every operator is one of LCE's binary ops
  (``binary_only``), else within float rounding. A mutation that keeps the model valid (a flipped weight
  byte) must compile and agree; so whether a compiled mutant is malformed is the reference's call:
- silent: compiled although the reference rejects the file, disagrees with bnn-tvm's output, or the .so
  fails at run time (the compiler accepted a model it cannot run).
- clear: one ``error:`` line that names the file, where in it the problem is (the operator, tensor, subgraph
  or buffer by index, the layer by name and class, the option or field, the byte offset) and what was
  expected, judged without the path the CLI prefixes and without raw Python internals (``classify_rejection``).
- partial (a failure): the file and only one of where and what.
- vague: neither (``cannot reshape array of size 3 into shape (4,)``), or no ``error:`` line.
- crash: a signal, a traceback or "This is a bug" (what the CLI says of an exception that is not the model's).
- hang: killed at the time limit.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.fuzz_mutators import byte_mutants, flatbuffer_mutants, keras_files, keras_mutants, tflite_schema

OUTCOMES = ("compiled", "clear", "partial", "vague", "silent", "crash", "hang")
FAILURES = ("partial", "vague", "silent", "crash", "hang")
LCE_BINARY_OPS = {"LceQuantize", "LceDequantize", "LceBconv2d", "LceBMaxPool2d"}
# Float outputs off the bit-exact path: within the float rounding the README states (1e-5 of the largest output).
FLOAT_TOLERANCE = 1e-5
BASE_CASES = ({"name": "channels32"}, {"name": "zero-padding", "pad_values": 0.0, "channels_in": 33},
              {"name": "int8", "output": "int8", "channels_in": 33, "channels_out": 40},
              {"name": "bmaxpool", "output": "packed", "maxpool": True, "channels_out": 64},
              {"name": "packed-handoff", "output": "packed", "channels_in": 64, "channels_out": 33, "strides": 2})
# What a clear message names: where in the model the problem is (an operator, tensor, subgraph, buffer or
# operator code by index, an input or output by index or name, a layer by name and class, an option or field
# by its schema name, a byte offset, or the part of the file a whole-file problem is in) ...
_LOCATION = re.compile(
    r"\b(?:operator(?: code)?|tensor|subgraph|buffer|signature|metadata) \d+|\b(?:input|output) (?:\d+|'[^']+')"
    r"|\binput [\w/:.]+ (?=has|is)|\blayer \S+ \(\w+\)|\bcustom option \w+|\b[a-z]+(?:_[a-z0-9]+)+\b"
    r"|\bat byte \d+|\bfile identifier\b|\bheader\b|\bconfig\.json\b|\bHDF5 file\b|\.keras archive\b"
    r"|\bKeras metadata\b|\bsaved_model\.pb\b|\bSavedModel\b|\bno (?:subgraphs|inputs|outputs|operators)\b")
# ... and what was expected of it, or what is wrong with it.
_EXPECTED = re.compile(
    r"\b(?:expected|expects?|but|needs?|must|supported|supports?|only|outside|missing|no|without|already|unknown|"
    r"out of range|not|cannot|too short|larger than|lies|refuses?|inconsistent|requires?|more|fewer|failed check)\b",
    re.I)
_RAW_PHRASES = re.compile(r"unpack_from requires a buffer[^;:]*|a bytes-like object is required[^;:]*|"
                          r"\b\w+Error\b:?[^;]*")


@dataclass
class Case:
    family: str
    mutation: str
    base: str
    path: str  # the mutated file
    reference: str  # "lce" or "keras"


def make_cases(count: int, seed: int, folder: Path, families=("bytes", "flatbuffer", "keras")) -> list[Case]:
    """``count`` mutated files in ``folder``, spread evenly over ``families``; the same for the same seed."""
    from bnn_tvm import zoo

    rng = random.Random(seed)
    bases = {c["name"]: zoo.cached_tflite(zoo.ConvCase(**c)).read_bytes() for c in BASE_CASES}
    # A stock-converted model: builtin operators with options (CONV_2D's strides, padding, activation).
    stock = zoo.ConvCase("stock-relu", activation="relu", batch_norm=False)
    bases[stock.name] = zoo.cached_stock_tflite(stock).read_bytes()
    schema = tflite_schema() if "flatbuffer" in families else None
    seeds = keras_files(folder) if "keras" in families else None
    cases = []
    for i in range(count):
        family = families[i % len(families)]
        base = rng.choice(sorted(bases))
        if family == "keras":
            mutation, suffix, data = keras_mutants(seeds, rng)
            base, reference = f"keras{suffix}", "keras"
        else:
            mutate = byte_mutants if family == "bytes" else lambda d, r: flatbuffer_mutants(d, r, schema)
            mutation, data = mutate(bases[base], rng)
            suffix, reference = ".tflite", "lce"
        path = folder / f"case{i:05d}{suffix}"
        path.write_bytes(data)
        cases.append(Case(family, mutation, base, str(path), reference))
    return cases


# ------------------------------------------------------------------------------------------------ the worker

def _forked(function, timeout: float, stdout: Path, stderr: Path) -> tuple[str, int]:
    """Run ``function()`` (its return value is the exit code) in a forked child: ("exit", code),
    ("signal", number) or ("hang", -1)."""
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.setpgid(0, 0)
            for fd, target in ((1, stdout), (2, stderr)):
                handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(handle, fd)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
            code = function()
        except BaseException:  # noqa: BLE001 - the child must never return into the worker's loop
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 70)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return ("signal", os.WTERMSIG(status)) if os.WIFSIGNALED(status) else ("exit", os.WEXITSTATUS(status))
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hang", -1


def _random_input(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def _compile_and_run(path: str, work: Path) -> int:
    from bnn_tvm import cli

    so = work / "model.so"
    code = cli.main(["compile", path, "-o", str(so)])
    if code != 0:
        return code
    (work / "compiled").touch()
    import bnn_tvm

    model = bnn_tvm.load(so, threads=1)
    shape, dtype = model.input_signature()
    x = _random_input(shape, dtype)
    y = model(x)
    np.save(work / "x.npy", x)
    np.save(work / "y.npy", np.asarray(y if not isinstance(y, list) else y[0]))
    return 0


def _reference(path: str, kind: str, work: Path) -> int:
    x = np.load(work / "x.npy")
    if kind == "lce":
        from bnn_tvm import zoo

        y = zoo.lce_interpreter(Path(path)).predict(x)
    else:
        import larq  # noqa: F401 - registers Larq's layers and quantizers with Keras
        import tensorflow as tf

        y = tf.keras.models.load_model(path, compile=False)(x).numpy()
    np.save(work / "reference.npy", np.asarray(y if not isinstance(y, list) else y[0]))
    return 0


def classify_rejection(stderr: str, path: str) -> tuple[str, str]:
    """(outcome, the error line) of a compile that exited 1.

    Clear: one ``error:`` line naming the file, where in it the problem is (``_LOCATION``) and what was
    expected (``_EXPECTED``), judged on the message without the file's path (which the CLI always prefixes)
    and without raw Python internals (``KeyError: 12``: a raw detail may follow a clear message, it does not
    make one). Partial: the file and only one of the two; vague: anything else.
    """
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if "Traceback (most recent call last)" in stderr or "This is a bug" in stderr:
        return "crash", (lines or [stderr.strip().splitlines()[-1] if stderr.strip() else ""])[-1]
    if not lines:
        return "vague", stderr.strip()[-300:]
    line = lines[-1]
    names_file = path in line or Path(path).name in line
    located, expected = _judge(line.replace(path, "").replace(Path(path).name, ""))
    if names_file and located and expected:
        return "clear", line
    return ("partial" if names_file and (located or expected) else "vague"), line


def _judge(message: str) -> tuple[bool, bool]:
    """(names where the problem is, says what was expected) of a message without the file's path. The check a
    bare ``assert`` of TVM's frontend states (``AssertionError: failed check `assert ...```) counts as the latter."""
    message = _RAW_PHRASES.sub("", message.replace("AssertionError: failed check", "failed check"))
    return bool(_LOCATION.search(message)), bool(_EXPECTED.search(message))


def names_what_is_wrong(message: str) -> bool:
    """Whether an error message (without the file's path) names where the problem is and what was expected."""
    return all(_judge(message))


def binary_only(path: str) -> bool:
    """Whether every operator of a .tflite's main subgraph is one of LCE's binary ops, whose results bnn-tvm
    gives bit for bit (LCE's own output formula): then a compiled mutant must equal LCE's output exactly.
    Float ops (TVM's kernels sum in another order than XNNPACK) are compared within float rounding."""
    import tflite

    from bnn_tvm.frontend.tflite_check import opcode_names

    model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    names, graph = opcode_names(model), model.Subgraphs(0)
    used = {names[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())}
    return used <= LCE_BINARY_OPS


def run_case(case: Case, timeout: float) -> dict:
    """Compile one mutant in a forked child and classify the outcome."""
    work = Path(tempfile.mkdtemp(prefix="case", dir=os.environ.get("FUZZ_TMP")))
    out, err = work / "stdout", work / "stderr"
    start = time.monotonic()
    status, code = _forked(lambda: _compile_and_run(case.path, work), timeout, out, err)
    result = {"family": case.family, "mutation": case.mutation, "base": case.base, "path": case.path,
              "seconds": round(time.monotonic() - start, 2)}
    stderr = err.read_text(errors="replace")
    if status == "hang":
        return {**result, "outcome": "hang", "message": f"killed after {timeout} s"}
    if status == "signal":
        return {**result, "outcome": "crash", "message": f"signal {code}: {stderr.strip()[-300:]}"}
    if code != 0 and not (work / "compiled").exists():
        outcome, line = classify_rejection(stderr, case.path)
        return {**result, "outcome": outcome, "message": line}
    if not (work / "y.npy").exists():  # compiled, then failed to load or run
        return {**result, "outcome": "silent", "message": f"compiled, then failed at run: {stderr.strip()[-300:]}"}
    status, code = _forked(lambda: _reference(case.path, case.reference, work), timeout, out, err)
    if status != "exit" or code != 0:
        why = err.read_text(errors="replace").strip().splitlines()[-1:] or [status]
        return {**result, "outcome": "silent", "message": f"compiled; {case.reference} rejects it: {why[0][:200]}"}
    got, expected = np.load(work / "y.npy"), np.load(work / "reference.npy")
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return {**result, "outcome": "silent", "message": f"compiled as {got.dtype}{list(got.shape)}, {case.reference} "
                                                          f"gives {expected.dtype}{list(expected.shape)}"}
    difference = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    largest = np.nanmax(difference, initial=0)
    if case.reference == "lce" and binary_only(case.path):
        if not np.array_equal(got, expected, equal_nan=True):
            return {**result, "outcome": "silent", "message": f"compiled; a model of LCE's binary ops only, yet "
                                                              f"its output differs from LCE's by {largest:.3g}"}
        return {**result, "outcome": "compiled", "message": "bit-exact"}
    scale = max(1.0, float(np.nanmax(np.abs(expected.astype(np.float64)), initial=0)))
    if not np.array_equal(np.isnan(got), np.isnan(expected)) or largest > FLOAT_TOLERANCE * scale:
        return {**result, "outcome": "silent",
                "message": f"compiled; output differs from {case.reference} by {largest:.3g}"}
    return {**result, "outcome": "compiled", "message": ""}


def worker(timeout: float) -> None:
    """Read cases (JSON lines) on stdin, answer results (JSON lines) on stdout; imports paid once."""
    import bnn_tvm  # noqa: F401
    from bnn_tvm import cli  # noqa: F401
    from bnn_tvm.frontend import tflite  # noqa: F401

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the imports must not corrupt the protocol
    for line in sys.stdin:
        case = Case(**json.loads(line))
        if case.reference == "keras":  # once here rather than ~10 s in every forked child
            os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
            import larq  # noqa: F401
            import tensorflow  # noqa: F401
        protocol.write(json.dumps(run_case(case, timeout)) + "\n")


def run_cases(cases: list[Case], jobs: int, timeout: float, say=None) -> list[dict]:
    """Results of ``cases``, run by ``jobs`` worker processes."""
    command = [sys.executable, "-m", "tests.fuzzing", "--worker", "--timeout", str(timeout)]
    root = Path(__file__).resolve().parent.parent
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
               for _ in range(max(1, min(jobs, len(cases))))]
    pending, busy, results = collections.deque(cases), {}, []
    try:
        for w in workers:
            if pending:
                busy[w.stdout.fileno()] = (w, pending.popleft())
                w.stdin.write(json.dumps(vars(busy[w.stdout.fileno()][1])) + "\n"), w.stdin.flush()
        while busy:
            ready, _, _ = select.select(list(busy), [], [])
            for fd in ready:
                w, case = busy.pop(fd)
                line = w.stdout.readline()
                if not line:  # the worker itself died: a crash it could not contain
                    raise RuntimeError(f"fuzz worker died on {case.path} ({case.mutation})")
                results.append(json.loads(line))
                if say:
                    say(results[-1])
                if pending:
                    busy[fd] = (w, pending.popleft())
                    w.stdin.write(json.dumps(vars(busy[fd][1])) + "\n"), w.stdin.flush()
    finally:
        for w in workers:
            w.stdin.close()
            w.wait(timeout=60)
    return results


def table(results: list[dict]) -> str:
    """The issue's table: cases per family and outcome, then the failing cases."""
    families = sorted({r["family"] for r in results})
    head = "| family | cases | " + " | ".join(OUTCOMES) + " | seconds per case |"
    rows = [head, "|" + "---|" * (len(OUTCOMES) + 3)]
    for family in families + ["all"]:
        mine = [r for r in results if family in ("all", r["family"])]
        counts = collections.Counter(r["outcome"] for r in mine)
        rows.append(f"| {family} | {len(mine)} | " + " | ".join(str(counts[o]) for o in OUTCOMES)
                    + f" | {sum(r['seconds'] for r in mine) / max(1, len(mine)):.1f} |")
    rejected = [r for r in results if r["outcome"] in ("clear", "partial", "vague")]
    clear = sum(r["outcome"] == "clear" for r in rejected)
    rows.append(f"\nclear rejections: {clear} of {len(rejected)} ({100 * clear / max(1, len(rejected)):.0f}%)")
    for r in results:
        if r["outcome"] in FAILURES + ("partial",):
            rows.append(f"{r['outcome']:8} {r['family']:10} {r['base']:15} {r['mutation']}: {r['message'][:300]}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default="bytes,flatbuffer,keras")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--keep", help="folder for the mutated files (default: a temporary one)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.timeout)
        return 0
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bnn-tvm-fuzz-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = make_cases(args.cases, args.seed, folder, tuple(args.families.split(",")))
    results = run_cases(cases, args.jobs, args.timeout,
                        say=lambda r: print(f"{r['outcome']:8} {r['seconds']:6.1f}s {r['mutation']}", flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results))
    return 1 if any(r["outcome"] in FAILURES for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
