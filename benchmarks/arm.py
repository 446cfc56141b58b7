"""ARM speed on the emulated Cortex-A72, bnn-tvm beside LCE on the same instrument: the README's ARM table.

For each larq-zoo model at 224x224 (random init, batch 1): bnn-tvm's rpi4 build of the LCE-converted .tflite,
counted on the emulated board (``bnn_tvm.armprofile``: exact instructions, llvm-mca cycle estimates), beside
LCE's own aarch64 kernels counted by the same instrument (``benchmarks/lce_arm.py``, 1 thread): per model, per
binary-convolution input depth, and for everything but the binary convolutions. Ratios are LCE / bnn-tvm
estimated cycles (above 1: bnn-tvm is faster). LCE's published Raspberry Pi 4 times are shown as context only:
they are hardware times, another instrument.

    .venv/bin/python benchmarks/arm.py [--models QuickNet BiRealNet] [--threads 1] [--float-reference]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bnn_tvm  # noqa: E402
from bnn_tvm import armprofile, zoo  # noqa: E402

from benchmarks.lce_arm import LCE_BCONVS, LCE_MODELS, LCE_PUBLISHED_RPI4_MS  # noqa: E402

MODELS = ("QuickNetSmall", "QuickNet", "QuickNetLarge", "BiRealNet")


def profile_model(name: str, size: int = 224, threads: int = 1, reference: bool = False) -> armprofile.ArmProfile:
    """bnn-tvm's rpi4 build of a larq-zoo model (LCE-converted .tflite); ``reference``: the float model under
    TFLite-XNNPACK beside it."""
    case = zoo.ZooCase(f"{name}-{size}", name, size=size)
    so = Path(tempfile.mkdtemp()) / f"{case.name}-rpi4.so"
    bnn_tvm.compile(zoo.cached_tflite(case), target="rpi4").export_library(so)
    return armprofile.profile(so, "rpi4", threads=threads,
                              reference=zoo.cached_stock_tflite(case) if reference else None)


def bconv_groups(profile: armprofile.ArmProfile) -> dict[int, dict[str, float]]:
    """bnn-tvm's binary convolutions by input depth: layers (calls), binary MACs, instructions, estimated cycles.
    A kernel holding a fused residual add counts it: LCE's adds are in its "everything else"."""
    groups = collections.defaultdict(lambda: collections.Counter())
    for kernel in profile.kernels:
        if kernel.channels_in:
            group = groups[kernel.channels_in]
            group.update(layers=kernel.calls, binary_macs=kernel.binary_macs, instructions=kernel.instructions,
                         cycles=kernel.cycles)
    return dict(sorted(groups.items()))


def model_row(name: str, profile: armprofile.ArmProfile) -> str:
    lce = LCE_MODELS[name]
    return (f"| {name} | {lce.instructions / 1e6:.1f} M | {lce.cycles / 1e6:.1f} M | {profile.instructions / 1e6:.1f} M | "
            f"{profile.cycles / 1e6:.1f} M | {lce.cycles / profile.cycles:.2f}x |")


def bconv_rows(name: str, profile: armprofile.ArmProfile) -> list[str]:
    rows = []
    for channels_in, ours in bconv_groups(profile).items():
        lce = LCE_BCONVS[name].get(channels_in)
        theirs = (f"{lce.layers} | {lce.cycles / 1e6:.2f} M | {lce.macs_per_cycle:.1f} | " if lce else "- | - | - | ")
        ratio = f"{lce.cycles / ours['cycles']:.2f}x" if lce else "-"
        rows.append(f"| {name} | {channels_in} | {theirs}{ours['layers']} | {ours['cycles'] / 1e6:.2f} M | "
                    f"{ours['binary_macs'] / ours['cycles']:.1f} | {ratio} |")
    return rows


def rest_row(name: str, profile: armprofile.ArmProfile) -> str:
    """Everything but the binary convolutions: LCE's quantize and XNNPACK's float ops against bnn-tvm's."""
    lce = LCE_MODELS[name]
    ours = profile.cycles - sum(group["cycles"] for group in bconv_groups(profile).values())
    return f"| {name} | {lce.non_bconv_cycles / 1e6:.2f} M | {ours / 1e6:.2f} M | {lce.non_bconv_cycles / ours:.2f}x |"


MODEL_HEADER = ("| model (224x224, 1 thread) | LCE instructions | LCE est. cycles | bnn-tvm instructions | "
                "bnn-tvm est. cycles | LCE / bnn-tvm cycles |\n|---|---|---|---|---|---|")
BCONV_HEADER = ("| model | Cin | LCE layers | LCE est. cycles | LCE bMACs/cycle | bnn-tvm layers | bnn-tvm est. cycles | "
                "bnn-tvm bMACs/cycle | LCE / bnn-tvm |\n|---|---|---|---|---|---|---|---|---|")
REST_HEADER = ("| model | LCE: quantize + XNNPACK + interpreter | bnn-tvm: all but binary convs | LCE / bnn-tvm |\n"
               "|---|---|---|---|")


THREADS_HEADER = ("| model (224x224) | threads | bnn-tvm instructions | busiest thread's est. cycles | "
                  "model-kernel instructions per thread |\n|---|---|---|---|---|")


def threads_row(name: str, profile: armprofile.ArmProfile) -> str:
    split = " / ".join(f"{count / 1e6:.1f} M" for count in profile.kernel_instructions_per_thread())
    return (f"| {name} | {profile.threads} | {profile.instructions / 1e6:.1f} M | {profile.cycles / 1e6:.2f} M | "
            f"{split} |")


def published_context(name: str, profile: armprofile.ArmProfile) -> str:
    published = dict(zip((1, 4), LCE_PUBLISHED_RPI4_MS.get(name, ()))).get(profile.threads)
    text = (f"{name}: bnn-tvm {profile.cycles / 1e6:.1f} M estimated cycles = {profile.estimated_ms:.1f} ms at 1.5 GHz "
            f"({profile.threads} thread{'s' if profile.threads > 1 else ''})")
    if published:
        text += (f"; LCE's published Raspberry Pi 4 hardware time {published:.1f} ms, a different instrument "
                 "(memory stalls included): context, not a ratio")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--float-reference", action="store_true",
                        help="also count the float model under TFLite-XNNPACK (slow: ~10x bnn-tvm's instructions)")
    args = parser.parse_args()
    profiles = {}
    for name in args.models:
        print(f"profiling {name}...", file=sys.stderr, flush=True)
        profiles[name] = profile_model(name, threads=args.threads, reference=args.float_reference)
        print(profiles[name].report(), file=sys.stderr, flush=True)
    if args.threads != 1:  # LCE's same-instrument figures are 1-thread: no ratio to them
        print(THREADS_HEADER)
        for name, profile in profiles.items():
            print(threads_row(name, profile))
        print()
    else:
        for header, row in ((MODEL_HEADER, model_row), (BCONV_HEADER, bconv_rows), (REST_HEADER, rest_row)):
            print(header)
            for name, profile in profiles.items():
                lines = row(name, profile)
                print("\n".join(lines) if isinstance(lines, list) else lines)
            print()
    for name, profile in profiles.items():
        print(published_context(name, profile))


if __name__ == "__main__":
    main()
