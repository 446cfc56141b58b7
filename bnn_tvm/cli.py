"""The ``bnn-tvm`` command line: compile and run, with the flags tvmc users know."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _compile(args) -> int:
    import shlex
    import shutil

    from . import compile as compile_model
    from .bundle import bundle_target, debian_compiler_package, make_bundle
    from .targets import presets

    if args.target not in presets():
        print(f"error: unknown target {args.target!r}; presets: {', '.join(sorted(presets()))}", file=sys.stderr)
        return 2
    preset = presets()[args.target]
    if preset.name == "android-arm64" and not args.cross_compiler:
        # This machine's aarch64 compiler links against glibc: Android (bionic) cannot load what it makes.
        print("error: --target android-arm64 needs the Android NDK's clang: install the NDK "
              "(https://developer.android.com/ndk) and pass --cross-compiler "
              "$NDK/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android<API>-clang (API: your app's "
              "minSdkVersion, e.g. aarch64-linux-android24-clang)", file=sys.stderr)
        return 2
    linker = args.cross_compiler or preset.cross_compiler
    if linker and shutil.which(linker) is None:
        hint = "check the path" if args.cross_compiler else f"apt-get install {debian_compiler_package(linker)}"
        print(f"error: {linker}, which links {args.target} libraries, is not installed: {hint}", file=sys.stderr)
        return 2
    _check_output(args.output)
    if args.bundle:
        bundle_target(preset)  # before compiling: a target without a runtime to bundle fails now, saying why

    def report(tuned, total, folder):
        source = (f"tuned schedules from {folder}" if str(folder) == str(args.tuning_records) else
                  f"the pre-tuned schedules bnn-tvm ships for {args.target} ({folder}; --no-pretuned turns them off)")
        print(f"{tuned} of {total} kernels use {source}")

    artifact = compile_model(Path(args.model), target=args.target, tuning_records=args.tuning_records,
                             report=report, pretuned=not args.no_pretuned, **_model_options(args))
    out = artifact.export_library(args.output, cross_compiler=args.cross_compiler,
                                  cross_compiler_options=shlex.split(args.cross_compiler_options or ""))
    print(f"compiled {args.model} for {args.target} ({artifact.target.attrs.get('mcpu', '')}) -> {out}")
    if artifact.binary_layers == 0:
        print(f"note: {args.model} has no binary layer: compiled as a float model, with TVM's default schedules "
              f"(bnn-tvm speeds up binary convolutions and dense layers: Larq's QuantConv2D and QuantDense with "
              f"sign quantizers)")
    if args.bundle:
        make_bundle(out, preset, args.bundle)
    return 0


def _check_output(output: str) -> None:
    """Refuse an output path that cannot be written before the minutes of compiling, not after."""
    from .frontend.errors import ModelFileError

    path = Path(output)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder; -o names the .so to write (e.g. {path / 'model.so'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ModelFileError(f"{path}: cannot be written: {parent} is a file, not a folder")
            break


def _model_options(args) -> dict:
    """How to read the model, as compile and tune take it: several --input-shapes add up, as one text would."""
    return {"input_shapes": " ".join(args.input_shapes) if args.input_shapes else None,
            "trust_model_code": args.trust_model_code}


def _add_model_flags(command) -> None:
    command.add_argument("--input-shapes", action="append", metavar="SHAPES",
                         help="input shapes, as tvmc: 'name:[1,224,224,3]' (several separated by spaces; a lone "
                              "[1,224,224,3] for a one-input model): the batch and the sizes a Keras model leaves "
                              "open (a .tflite file's shapes are fixed)")
    command.add_argument("--trust-model-code", action="store_true",
                         help="let a Keras model file run the Python code it carries (Lambda layers): that code "
                              "runs on this machine, so only for files you trust; without it they are refused")


def _add_input_flags(command) -> None:
    command.add_argument("--inputs", metavar="FILE.npz",
                         help="the model's inputs, an .npz keyed by input name (np.savez(path, name=array, ...))")
    command.add_argument("--input", action="append", metavar="[NAME=]FILE.npy",
                         help="one input, named or the next one not given yet (repeat for several); inputs "
                              "given neither way are random")
    command.add_argument("--seed", type=int, default=0, help="seed of the random inputs (input i: seed + i)")


def _add_rpc_flags(command, verb: str) -> None:
    command.add_argument("--rpc-tracker", help=f"{verb} a board registered with this tracker (HOST:PORT)")
    command.add_argument("--rpc-key", help="the board's key at the tracker")
    command.add_argument("--rpc-timeout", type=float, default=30.0, metavar="SECONDS",
                         help="how long to wait for a board of the key (default 30)")


def _rpc_flags_paired(args) -> bool:
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        print("error: --rpc-tracker and --rpc-key go together", file=sys.stderr)
        return False
    return True


def _tune(args) -> int:
    import shlex

    from .tuning import tune
    from .tuning.whole_model import settle_with_whole_model

    if not _rpc_flags_paired(args):
        return 2
    from tqdm import tqdm

    if args.budget is not None and args.budget <= 0:
        print(f"error: --budget must be a positive number of minutes, got {args.budget}", file=sys.stderr)
        return 2
    def say(line):
        tqdm.write(line)
        sys.stdout.flush()

    log_dir = tune(Path(args.model), target=args.target, trials=args.trials, log_dir=args.log,
                   rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, rpc_timeout=args.rpc_timeout,
                   only_binary=args.only_binary, say=say, budget_minutes=args.budget, **_model_options(args))
    if not args.no_compare:
        result = settle_with_whole_model(Path(args.model), args.target, log_dir, args.rpc_tracker, args.rpc_key,
                                         say=say, **_model_options(args))
        print(f"whole model: default schedules {result.default:,.4g}, tuned {result.tuned:,.4g} {result.unit}: "
              f"{result.default / result.tuned:.2f}x")
    shapes = f" --input-shapes {shlex.quote(' '.join(args.input_shapes))}" if args.input_shapes else ""
    print(f"tuning records in {log_dir}; use them with `bnn-tvm compile ...{shapes} --tuning-records {log_dir}`")
    return 0


def _run(args) -> int:
    import numpy as np

    from .runtime import load, load_remote, median_ms
    from .signature import read_inputs, save_outputs

    if not _rpc_flags_paired(args):
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.rpc_tracker:
        model = load_remote(args.model, args.rpc_tracker, args.rpc_key, threads=args.threads,
                            timeout=args.rpc_timeout)
    else:
        model = load(args.model, threads=args.threads)
    signature = model.signature()
    inputs = read_inputs(signature, args.inputs, args.input or (), seed=args.seed, say=print)
    outputs = model(*inputs)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    names = [s.name for s in signature.outputs] if len(signature.outputs) == len(outputs) else \
        [str(i) for i in range(len(outputs))]
    for name, out in zip(names, outputs, strict=True):
        print(
            f"output {name!r}: shape {list(out.shape)} {out.dtype}; min {out.min():.6g} max {out.max():.6g} "
            f"mean {out.astype(np.float64).mean():.6g}; argmax {int(out.reshape(out.shape[0], -1)[0].argmax())}"
        )
    if args.output:
        written = save_outputs(args.output, signature, outputs)
        print(f"saved {'the output' if len(outputs) == 1 else f'{len(outputs)} outputs'} to {written}")
    if args.repeat:
        times = model.time(*inputs, repeat=args.repeat)
        threads = model.threads()
        print(f"median latency {median_ms(times):.3f} ms over {args.repeat} runs, "
              f"{threads} thread{'s' if threads > 1 else ''}")
    return 0


def _profile(args) -> int:
    from .armprofile import profile

    if args.emulate != "aarch64":
        print("error: --emulate aarch64 is the board bnn-tvm can emulate", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    print(profile(args.model, target=args.target, threads=args.threads, reference=args.reference,
                  inputs_file=args.inputs, input_files=args.input or (), seed=args.seed).report())
    return 0


def _bench(args) -> int:
    from . import bench

    try:
        bench.check_arguments(args.model, args.threads, args.against, args.runs, args.repeat, args.warmup,
                              inputs_file=args.inputs, input_files=args.input or ())
        bench.run(args.model, threads=args.threads, against=args.against, runs=args.runs, repeat=args.repeat,
                  warmup=args.warmup, out=args.out or f"bench-{Path(args.model).stem}", size=args.size,
                  tuning_records=args.tuning_records, plot=args.plot, say=lambda line: print(line, flush=True),
                  inputs_file=args.inputs, input_files=args.input or (), seed=args.seed)
    except bench.BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _tracker(args) -> int:
    from . import board

    if args.action == "start":
        pid = board.start_tracker(args.port, args.host)
        print(f"tracker listening on {args.host}:{args.port} (pid {pid})")
    else:
        stopped = board.stop_tracker(args.port)
        print(f"tracker on port {args.port} {'stopped' if stopped else 'was not running'}")
    return 0


def _board(args) -> int:
    from . import board

    if args.action == "requirements":
        print("\n".join(board.host_requirements()))
        return 0
    if args.action == "sysroot":  # for running a bundle's bnn-run under qemu-user here
        print(board.build_emulated_board() / "sysroot")
        return 0
    if not args.key:
        print(f"error: board {args.action} needs --key KEY", file=sys.stderr)
        return 2
    if args.action == "start":
        if args.emulate != "aarch64":
            print("error: --emulate aarch64 is the board bnn-tvm can emulate; a real board runs "
                  "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` itself", file=sys.stderr)
            return 2
        if not args.tracker:
            print("error: board start needs --tracker HOST:PORT", file=sys.stderr)
            return 2
        pids = board.start_emulated_board(args.tracker, args.key, port=args.port, host=args.host, count=args.count)
        print(f"{len(pids)} emulated aarch64 board{'s' * (len(pids) > 1)} of key {args.key!r} ready, registered "
              f"with {args.tracker} (pid {', '.join(map(str, pids))})")
    else:
        stopped = board.stop_board(args.key)
        print(f"{stopped} emulated board{'s' * (stopped != 1)} of key {args.key!r} stopped" if stopped else
              f"no emulated board of key {args.key!r} was running")
    return 0


MODEL_HELP = "a .tflite file (LCE-converted or stock) or a Keras/Larq model (.h5, .keras, SavedModel folder)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnn-tvm",
        description="Compile binarized neural networks (Keras/Larq models, LCE-converted or stock .tflite) "
                    "with Apache TVM.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    compile_cmd = commands.add_parser("compile", help="compile a model to a deployable .so",
                                      description="Compile a model into one shared library.")
    compile_cmd.add_argument("model", help=MODEL_HELP)
    compile_cmd.add_argument("--target", default="host", help="target preset (default: host)")
    compile_cmd.add_argument("-o", "--output", required=True, help="the .so to write")
    compile_cmd.add_argument("--tuning-records", help="a folder written by `bnn-tvm tune`: use its best schedules "
                             "(before the pre-tuned ones)")
    compile_cmd.add_argument("--no-pretuned", action="store_true",
                             help="do not apply the pre-tuned schedules bnn-tvm ships for the target (tune_logs/)")
    compile_cmd.add_argument("--bundle", metavar="DIR",
                             help="also write DIR: the .so, TVM's runtime libraries and a prebuilt `bnn-run` for the "
                                  "target, which run it without Python (copy DIR to the device)")
    compile_cmd.add_argument("--cross-compiler", help="link the .so with this compiler instead of the preset's (e.g. "
                                                      "the Android NDK's aarch64-linux-android24-clang)")
    compile_cmd.add_argument("--cross-compiler-options", help="options for the linking compiler, one string; with "
                                                              "an = as they start with a dash (e.g. "
                                                              "--cross-compiler-options=\"--sysroot=/path -s\")")
    _add_model_flags(compile_cmd)
    compile_cmd.set_defaults(func=_compile)

    tune_cmd = commands.add_parser("tune", help="tune a model's kernels for a target (MetaSchedule, XGBoost)",
                                   description="Search faster schedules for a model's kernels, locally or on a "
                                               "board through an RPC tracker (an aarch64 preset without a board: "
                                               "on the emulated board, by estimated cycles); records go to --log "
                                               "and resume from there.")
    tune_cmd.add_argument("model", help=MODEL_HELP)
    tune_cmd.add_argument("--target", default="host", help="target preset (default: host)")
    tune_cmd.add_argument("--trials", type=int, default=64, help="measurements per kernel (default 64)")
    tune_cmd.add_argument("--budget", type=float, metavar="MINUTES",
                          help="end the search after this many minutes (the database stays complete and usable)")
    tune_cmd.add_argument("--no-compare", action="store_true",
                          help="skip measuring the whole model tuned against the default schedules at the end")
    tune_cmd.add_argument("--log", required=True, help="folder of the tuning database (created; resumed)")
    _add_rpc_flags(tune_cmd, "measure on")
    tune_cmd.add_argument("--only-binary", action="store_true", help="tune the binary kernels only")
    _add_model_flags(tune_cmd)
    tune_cmd.set_defaults(func=_tune)

    run_cmd = commands.add_parser("run", help="run a compiled .so",
                                  description="Run a compiled model on this machine.")
    run_cmd.add_argument("model", help="a .so made by `bnn-tvm compile`")
    _add_input_flags(run_cmd)
    run_cmd.add_argument("--output", help="write the output to this .npy (several outputs: an .npz keyed by "
                                          "output name)")
    run_cmd.add_argument("--repeat", type=int, default=0, help="time N runs and print the median latency")
    run_cmd.add_argument("--threads", type=int, help="threads to run on (default: one per physical core)")
    _add_rpc_flags(run_cmd, "run on")
    run_cmd.set_defaults(func=_run)

    profile_cmd = commands.add_parser(
        "profile", help="count an aarch64 .so's instructions and estimate its cycles per kernel (emulated board)",
        description="Run an aarch64 .so on the emulated board under an instruction counter: per kernel, calls, "
                    "instructions (exact), estimated cycles of the preset's core (llvm-mca) and binary MACs per "
                    "instruction and per cycle; totals per inference and an estimated latency at the preset's clock. "
                    "Estimates leave out cache misses and mispredictions.")
    profile_cmd.add_argument("model", help="a .so made by `bnn-tvm compile --target rpi4` (or another aarch64 preset)")
    profile_cmd.add_argument("--emulate", default="aarch64", help="the board to emulate (aarch64)")
    profile_cmd.add_argument("--target", default="rpi4", help="the aarch64 preset the .so was built for: its core "
                                                              "and clock (default rpi4: Cortex-A72 at 1.5 GHz)")
    profile_cmd.add_argument("--threads", type=int, default=1, help="TVM threads (default 1); reports each thread")
    profile_cmd.add_argument("--reference", help="a float .tflite to count under TFLite with XNNPACK beside it")
    _add_input_flags(profile_cmd)
    profile_cmd.set_defaults(func=_profile)

    bench_cmd = commands.add_parser(
        "bench", help="time a model against LCE and TFLite, each engine in its own process",
        description="Compile a model for this machine and time it against LCE's interpreter and TFLite (XNNPACK, "
                    "on the float-equivalent model): each engine in its own process, same input, same threads, "
                    "medians of several processes; ratios, outputs compared, bnn-tvm's time per kernel with binary "
                    "MACs/s against this core's popcount peak. Writes DIR/bench.md and DIR/bench.json.")
    bench_cmd.add_argument("model", help=MODEL_HELP + ", or a larq-zoo architecture name (e.g. QuickNet)")
    bench_cmd.add_argument("--size", type=int, default=224, help="input size of a larq-zoo architecture (default 224)")
    bench_cmd.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts (default 1)")
    bench_cmd.add_argument("--against", nargs="*", default=["lce", "tflite"],
                           help="engines to compare with: lce, tflite (default both)")
    bench_cmd.add_argument("--runs", type=int, default=10, help="timed runs per process (default 10)")
    bench_cmd.add_argument("--repeat", type=int, default=3, help="processes per engine and thread count (default 3)")
    bench_cmd.add_argument("--warmup", type=int, default=3, help="untimed runs before the timed ones (default 3)")
    bench_cmd.add_argument("--out", help="folder for bench.md, bench.json, bench.png (default bench-MODEL)")
    bench_cmd.add_argument("--tuning-records", help="a folder written by `bnn-tvm tune`: bench the tuned build")
    bench_cmd.add_argument("--plot", action="store_true", help="also write bench.png (bar charts)")
    _add_input_flags(bench_cmd)
    bench_cmd.set_defaults(func=_bench)

    tracker_cmd = commands.add_parser("tracker", help="start or stop a TVM RPC tracker",
                                      description="Start (in the background) or stop TVM's RPC tracker.")
    tracker_cmd.add_argument("action", choices=["start", "stop"])
    tracker_cmd.add_argument("--port", type=int, default=9190, help="port (default 9190)")
    tracker_cmd.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    tracker_cmd.set_defaults(func=_tracker)

    board_cmd = commands.add_parser("board", help="start or stop emulated ARM boards",
                                    description="Start emulated aarch64 boards (qemu) running TVM's RPC server, "
                                                "registered with a tracker under one key; or stop all of the key's. "
                                                "`requirements` prints the "
                                                "exact Python packages a real board needs (pip install -r); "
                                                "`sysroot` the emulated board's aarch64 libraries (built once), "
                                                "for `qemu-aarch64-static -L SYSROOT bundle/bnn-run ...`.")
    board_cmd.add_argument("action", choices=["start", "stop", "requirements", "sysroot"])
    board_cmd.add_argument("--emulate", default="aarch64", help="the board to emulate (aarch64)")
    board_cmd.add_argument("--tracker", help="the tracker, HOST:PORT")
    board_cmd.add_argument("--key", help="the key the board registers under")
    board_cmd.add_argument("--count", type=int, default=1,
                           help="start this many emulated boards under the key, a farm to tune on (default 1)")
    board_cmd.add_argument("--port", type=int, default=9090,
                           help="first port the server tries (default 9090; board i from port + i)")
    board_cmd.add_argument("--host", default="127.0.0.1", help="address the server binds (default 127.0.0.1)")
    board_cmd.set_defaults(func=_board)
    # Before or after the command's name; SUPPRESS keeps a subcommand's absent flag from unsetting the global one.
    verbose = "on an error, also print the traceback (errors are one line otherwise)"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose)
    for command in commands.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose)
    return parser


def _users_mistake(err: BaseException) -> bool:
    """Whether ``err`` says what is wrong with the user's files, flags or machine (one ``error:`` line), rather
    than a bug in bnn-tvm (a traceback, asking for a report).

    Users' mistakes: ``ValueError`` (bnn-tvm's checks of models, files and flags raise its subclasses),
    ``OSError`` (files), ``ImportError`` (a missing extra), TVM's errors about an operator or the graph
    (``tvm.error.OpError``, ``DiagnosticError``) and RPC, and the ``RuntimeError`` subclasses bnn-tvm raises for
    boards, bundles and benchmarks. TVM's ``InternalError`` and Python's ``TypeError``, ``KeyError``,
    ``IndexError``, ``AttributeError``, ``AssertionError``... on a model mean bnn-tvm let something through
    that it should have named: a bug.
    """
    import tvm.error

    from .armprofile import ProfileError
    from .board import BoardError
    from .bundle import BundleError
    from .lock import LockError

    if isinstance(err, tvm.error.InternalError):
        return False
    return isinstance(err, (ValueError, OSError, ImportError, tvm.error.OpError, tvm.error.DiagnosticError,
                            tvm.error.RPCError, BoardError, BundleError, LockError, ProfileError))


def _error_line(err: BaseException, args) -> str:
    """``error: <file>: <problem>``: the file is the one the error names, else the command's model."""
    from .board import BoardError

    if isinstance(err, OSError) and err.filename is not None:
        return f"error: {err.filename}: {err.strerror or err}"
    message = str(err).strip()
    if isinstance(err, BoardError):  # the tracker or the board, not a file, is what it names
        return f"error: {message}"
    files = [str(getattr(args, name)) for name in ("model", "output", "inputs", "tuning_records", "log", "reference")
             if getattr(args, name, None)]
    files += [text.partition("=")[2] or text for text in getattr(args, "input", None) or ()]  # [NAME=]FILE
    if files and not any(f in message for f in files) and not any(Path(f).name in message for f in files):
        return f"error: {files[0]}: {message}"
    return f"error: {message}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        # TensorFlow's start-up lines (oneDNN, CUDA, TensorRT) around the one line that matters; a level the user
        # exported wins. This is the CLI's own process: the library never sets it.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from .board import quiet_rpc_logging

        quiet_rpc_logging()  # TVM's "Cannot connect to tracker ..., retry in 5 secs": the error line says it
    try:
        return args.func(args)
    except Exception as err:  # noqa: BLE001 - every failure ends in one line, a traceback only for bugs
        import traceback

        if not _users_mistake(err):
            traceback.print_exc()
            print(f"error: bnn-tvm failed with {type(err).__name__}: {err}\nThis is a bug in bnn-tvm: please "
                  f"report it with the command and the traceback above.", file=sys.stderr)
            return 1
        if args.verbose:
            traceback.print_exc()
        print(_error_line(err, args), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
