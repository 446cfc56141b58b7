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
    artifact = compile_model(Path(args.model), target=args.target)
    out = artifact.export_library(args.output)
    print(f"compiled {args.model} for {args.target} ({artifact.target.attrs.get('mcpu', '')}) -> {out}")
    return 0


def _run(args) -> int:
    from .runtime import load, median_ms

    model = load(args.model)
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


def _random_input(shape, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnn-tvm",
        description="Compile binarized neural networks (LCE-converted .tflite) with Apache TVM.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    compile_cmd = commands.add_parser("compile", help="compile a model to a deployable .so",
                                      description="Compile a .tflite model into one shared library.")
    compile_cmd.add_argument("model", help="an LCE-converted (or plain) .tflite file")
    compile_cmd.add_argument("--target", default="host", help="target preset (default: host)")
    compile_cmd.add_argument("-o", "--output", required=True, help="the .so to write")
    compile_cmd.set_defaults(func=_compile)

    run_cmd = commands.add_parser("run", help="run a compiled .so",
                                  description="Run a compiled model on this machine.")
    run_cmd.add_argument("model", help="a .so made by `bnn-tvm compile`")
    run_cmd.add_argument("--input", help="input .npy (default: random input of the model's shape)")
    run_cmd.add_argument("--output", help="write the output to this .npy")
    run_cmd.add_argument("--repeat", type=int, default=0, help="time N runs and print the median latency")
    run_cmd.add_argument("--seed", type=int, default=0, help="seed of the random input")
    run_cmd.set_defaults(func=_run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad model, target or input: say what, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
