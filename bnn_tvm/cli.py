"""The ``bnn-tvm`` command line: compile and run, with the flags tvmc users know."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _compile(args) -> int:
    from . import compile as compile_model
    from .targets import presets

    if args.target not in presets():
        print(f"error: unknown target {args.target!r}; presets: {', '.join(sorted(presets()))}", file=sys.stderr)
        return 2
    def report(tuned, total):
        print(f"{tuned} of {total} kernels use tuned schedules from {args.tuning_records}; "
              f"the rest use the default schedules")

    artifact = compile_model(Path(args.model), target=args.target, tuning_records=args.tuning_records,
                             report=report)
    out = artifact.export_library(args.output)
    print(f"compiled {args.model} for {args.target} ({artifact.target.attrs.get('mcpu', '')}) -> {out}")
    return 0


def _rpc_flags_paired(args) -> bool:
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        print("error: --rpc-tracker and --rpc-key go together", file=sys.stderr)
        return False
    return True


def _tune(args) -> int:
    from .tuning import tune

    if not _rpc_flags_paired(args):
        return 2
    log_dir = tune(Path(args.model), target=args.target, trials=args.trials, log_dir=args.log,
                   rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, only_binary=args.only_binary,
                   say=lambda message: print(message, flush=True))
    print(f"tuning records in {log_dir}; use them with `bnn-tvm compile ... --tuning-records {log_dir}`")
    return 0


def _run(args) -> int:
    from .runtime import load, load_remote, median_ms

    if not _rpc_flags_paired(args):
        return 2
    model = load_remote(args.model, args.rpc_tracker, args.rpc_key) if args.rpc_tracker else load(args.model)
    if args.input:
        x = np.load(args.input)
    else:
        shape, dtype = model.input_signature()
        x = _random_input(shape, dtype, seed=args.seed)
        print(f"random input {list(shape)} {dtype} (seed {args.seed})")
    y = model(x)
    outputs = y if isinstance(y, list) else [y]
    for i, out in enumerate(outputs):
        print(
            f"output {i}: shape {list(out.shape)} {out.dtype}; min {out.min():.6g} max {out.max():.6g} "
            f"mean {out.astype(np.float64).mean():.6g}; argmax {int(out.reshape(out.shape[0], -1)[0].argmax())}"
        )
    if args.output:
        np.save(args.output, outputs[0] if len(outputs) == 1 else np.array(outputs, dtype=object))
        print(f"saved output to {args.output}")
    if args.repeat:
        times = model.time(x, repeat=args.repeat)
        print(f"median latency {median_ms(times):.3f} ms over {args.repeat} runs")
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

    if args.action == "start":
        if args.emulate != "aarch64":
            print("error: --emulate aarch64 is the board bnn-tvm can emulate; a real board runs "
                  "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` itself", file=sys.stderr)
            return 2
        if not args.tracker or not args.key:
            print("error: board start needs --tracker HOST:PORT and --key KEY", file=sys.stderr)
            return 2
        pid = board.start_emulated_board(args.tracker, args.key, port=args.port, host=args.host)
        print(f"emulated aarch64 board {args.key!r} ready, registered with {args.tracker} (pid {pid})")
    else:
        stopped = board.stop_board(args.key)
        print(f"board {args.key!r} {'stopped' if stopped else 'was not running'}")
    return 0


def _random_input(shape, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


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
    compile_cmd.add_argument("--tuning-records", help="a folder written by `bnn-tvm tune`: use its best schedules")
    compile_cmd.set_defaults(func=_compile)

    tune_cmd = commands.add_parser("tune", help="tune a model's kernels for a target (MetaSchedule, XGBoost)",
                                   description="Search faster schedules for a model's kernels, locally or on a "
                                               "board through an RPC tracker; records go to --log and resume "
                                               "from there.")
    tune_cmd.add_argument("model", help=MODEL_HELP)
    tune_cmd.add_argument("--target", default="host", help="target preset (default: host)")
    tune_cmd.add_argument("--trials", type=int, default=64, help="measurements per kernel (default 64)")
    tune_cmd.add_argument("--log", required=True, help="folder of the tuning database (created; resumed)")
    tune_cmd.add_argument("--rpc-tracker", help="measure on a board registered with this tracker (HOST:PORT)")
    tune_cmd.add_argument("--rpc-key", help="the board's key at the tracker")
    tune_cmd.add_argument("--only-binary", action="store_true", help="tune the binary kernels only")
    tune_cmd.set_defaults(func=_tune)

    run_cmd = commands.add_parser("run", help="run a compiled .so",
                                  description="Run a compiled model on this machine.")
    run_cmd.add_argument("model", help="a .so made by `bnn-tvm compile`")
    run_cmd.add_argument("--input", help="input .npy (default: random input of the model's shape)")
    run_cmd.add_argument("--output", help="write the output to this .npy")
    run_cmd.add_argument("--repeat", type=int, default=0, help="time N runs and print the median latency")
    run_cmd.add_argument("--seed", type=int, default=0, help="seed of the random input")
    run_cmd.add_argument("--rpc-tracker", help="run on a board registered with this tracker (HOST:PORT)")
    run_cmd.add_argument("--rpc-key", help="the board's key at the tracker")
    run_cmd.set_defaults(func=_run)

    tracker_cmd = commands.add_parser("tracker", help="start or stop a TVM RPC tracker",
                                      description="Start (in the background) or stop TVM's RPC tracker.")
    tracker_cmd.add_argument("action", choices=["start", "stop"])
    tracker_cmd.add_argument("--port", type=int, default=9190, help="port (default 9190)")
    tracker_cmd.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    tracker_cmd.set_defaults(func=_tracker)

    board_cmd = commands.add_parser("board", help="start or stop an emulated ARM board",
                                    description="Start an emulated aarch64 board (qemu) running TVM's RPC server, "
                                                "registered with a tracker; or stop it.")
    board_cmd.add_argument("action", choices=["start", "stop"])
    board_cmd.add_argument("--emulate", default="aarch64", help="the board to emulate (aarch64)")
    board_cmd.add_argument("--tracker", help="the tracker, HOST:PORT")
    board_cmd.add_argument("--key", required=True, help="the key the board registers under")
    board_cmd.add_argument("--port", type=int, default=9090, help="first port the server tries (default 9090)")
    board_cmd.add_argument("--host", default="127.0.0.1", help="address the server binds (default 127.0.0.1)")
    board_cmd.set_defaults(func=_board)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # say what went wrong, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
