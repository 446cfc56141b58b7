"""ARM speed, estimated on the emulated Cortex-A72: the README's ARM table.

For each larq-zoo model at 224x224 (random init, batch 1, 1 thread): bnn-tvm's rpi4 build and the float
model under TFLite with XNNPACK, both counted on the emulated board (``bnn_tvm.armprofile``), beside LCE's
published Raspberry Pi 4 latencies. Instructions are exact; cycles and milliseconds are estimates.

    .venv/bin/python benchmarks/arm.py [--models QuickNet BiRealNet] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bnn_tvm  # noqa: E402
from bnn_tvm import armprofile, zoo  # noqa: E402

# LCE's published latencies on a Raspberry Pi 4 (Cortex-A72 at 1.5 GHz), ms at 1 and 4 threads
# (larq.dev, Larq Compute Engine model zoo benchmarks). LCE has no figure for BiRealNet there.
LCE_RPI4_MS = {"QuickNetSmall": (27.7, 12.1), "QuickNet": (45.0, 20.8), "QuickNetLarge": (77.0, 31.7)}
MODELS = ("QuickNetSmall", "QuickNet", "QuickNetLarge", "BiRealNet")


def profile_model(name: str, size: int = 224, threads: int = 1, reference: bool = True) -> armprofile.ArmProfile:
    """bnn-tvm's rpi4 build of a larq-zoo model (LCE-converted .tflite), with TFLite-XNNPACK beside it."""
    case = zoo.ZooCase(f"{name}-{size}", name, size=size)
    so = Path(tempfile.mkdtemp()) / f"{case.name}-rpi4.so"
    bnn_tvm.compile(zoo.cached_tflite(case), target="rpi4").export_library(so)
    return armprofile.profile(so, "rpi4", threads=threads,
                              reference=zoo.cached_stock_tflite(case) if reference else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        print(f"profiling {name}...", file=sys.stderr, flush=True)
        result = profile_model(name, threads=args.threads)
        print(result.report(), file=sys.stderr, flush=True)
        ref = result.reference
        lce = LCE_RPI4_MS.get(name)
        lce_ms = f"{lce[0 if args.threads == 1 else 1]:.1f} ms" if lce and args.threads in (1, 4) else "n/a"
        rows.append(f"| {name} | {result.instructions / 1e6:.1f} M | {result.cycles / 1e6:.1f} M | "
                    f"{result.estimated_ms:.1f} ms | {lce_ms} | {ref.instructions / 1e6:.1f} M | "
                    f"{ref.cycles / 1e6:.1f} M | {ref.estimated_ms:.1f} ms |")
    print("| model (224x224) | bnn-tvm instructions | est. cycles | est. ms at 1.5 GHz | LCE published, RPi 4 | "
          "TFLite-XNNPACK (float) instructions | est. cycles | est. ms |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
