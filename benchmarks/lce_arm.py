"""LCE's own aarch64 kernels counted on bnn-tvm's emulated board: the same-instrument reference figures.

How they were measured (recorded with the figures in the team's ``shared/lce_arm`` notes; LCE's aarch64 library
is not part of this repository, so its figures are carried here as data):

- Engine: Larq Compute Engine's ``LceBconv2d``, ``LceQuantize``, ``LceDequantize`` and ``LceBMaxPool2d`` kernels
  (larq/compute-engine ``e6860fcf``) cross-compiled for aarch64 (gcc 12.2, LCE's aarch64 flags) and loaded as
  custom ops into the ``ai-edge-litert`` 1.4.0 interpreter on the emulated board; every other op on its default
  XNNPACK delegate, as LCE deploys. LCE's default bconv path: im2col + ruy packing + the hand-written
  ``BinaryKernelNeon8x4`` BGEMM, then its output transform. One thread; weights packed once, outside the count.
- Counter: the same as ``bnn_tvm.armprofile``: Debian's dynamic ``qemu-aarch64`` 7.2 with ``-cpu cortex-a72``
  and an instruction-counting TCG plugin, per inference = (3 inferences - 1) / 2 after a warm-up; per-op figures
  from marker instructions around each LCE op call (within 0.02% of the totals).
- Cycles: llvm-mca 14, ``-mcpu=cortex-a72`` (its A57 model), on the hot blocks times their executions: steady
  state, no cache misses or mispredictions, a lower bound for both engines alike.
- Models: random-init larq-zoo architectures at 224x224, batch 1, converted by LCE 0.16.0 (the counts depend on
  the shapes, not the weights). Outputs on the board matched bnn-tvm's and LCE's x86 interpreter's to 6e-7 of
  the largest logit.

LCE's published Raspberry Pi 4 latencies are a different instrument (hardware, with memory stalls; QuickNet's
45.0 ms at 1.5 GHz is 1.55x the 43.4 M cycles estimated here): context only, never divided by an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LceModelCost:
    """LCE's per-inference cost of one model, 1 thread: whole model and its split by op kind (cycles)."""

    instructions: float
    cycles: float
    bconv_cycles: float
    quantize_cycles: float
    other_cycles: float  # XNNPACK's float ops (stem, shortcuts, adds, pools, classifier) and the interpreter

    @property
    def non_bconv_cycles(self) -> float:
        return self.quantize_cycles + self.other_cycles


@dataclass(frozen=True)
class LceConvGroup:
    """LCE's binary convolutions of one input depth in one model (LCE's whole op: im2col, BGEMM, transform)."""

    layers: int
    binary_macs: float
    instructions: float
    cycles: float
    spatial: int  # input height and width

    @property
    def macs_per_cycle(self) -> float:
        return self.binary_macs / self.cycles


M = 1e6
LCE_MODELS = {
    "QuickNetSmall": LceModelCost(48.26 * M, 27.39 * M, 18.69 * M, 1.04 * M, 8.00 * M),
    "QuickNet": LceModelCost(75.48 * M, 43.44 * M, 28.21 * M, 1.74 * M, 13.88 * M),
    "QuickNetLarge": LceModelCost(132.15 * M, 72.10 * M, 54.68 * M, 3.19 * M, 15.32 * M),
    "BiRealNet": LceModelCost(133.36 * M, 79.58 * M, 26.44 * M, 1.94 * M, 52.37 * M),
}

# {model: {input channels: group}}
LCE_BCONVS = {
    "QuickNetSmall": {
        32: LceConvGroup(4, 115.6 * M, 8.06 * M, 4.24 * M, 56),
        64: LceConvGroup(4, 115.6 * M, 4.65 * M, 2.36 * M, 28),
        256: LceConvGroup(4, 462.4 * M, 12.69 * M, 6.01 * M, 14),
        512: LceConvGroup(4, 462.4 * M, 13.01 * M, 6.07 * M, 7),
    },
    "QuickNet": {
        64: LceConvGroup(4, 462.4 * M, 18.54 * M, 9.40 * M, 56),
        128: LceConvGroup(4, 462.4 * M, 13.75 * M, 6.73 * M, 28),
        256: LceConvGroup(4, 462.4 * M, 12.69 * M, 6.01 * M, 14),
        512: LceConvGroup(4, 462.4 * M, 13.01 * M, 6.06 * M, 7),
    },
    "QuickNetLarge": {
        64: LceConvGroup(6, 693.6 * M, 27.81 * M, 14.10 * M, 56),
        128: LceConvGroup(8, 924.8 * M, 27.51 * M, 13.45 * M, 28),
        256: LceConvGroup(12, 1387.3 * M, 38.06 * M, 18.04 * M, 14),
        512: LceConvGroup(6, 693.6 * M, 19.52 * M, 9.09 * M, 7),
    },
    "BiRealNet": {
        64: LceConvGroup(5, 520.2 * M, 20.86 * M, 10.58 * M, 56),
        128: LceConvGroup(4, 404.6 * M, 12.11 * M, 5.93 * M, 28),
        256: LceConvGroup(4, 404.6 * M, 11.29 * M, 5.35 * M, 14),
        512: LceConvGroup(3, 346.8 * M, 9.83 * M, 4.59 * M, 7),
    },
}

# LCE's published Raspberry Pi 4 latencies (Cortex-A72 at 1.5 GHz, ms at 1 and 4 threads; larq.dev's LCE model
# zoo benchmarks; none for BiRealNet): hardware times, context only.
LCE_PUBLISHED_RPI4_MS = {"QuickNetSmall": (27.7, 12.1), "QuickNet": (45.0, 20.8), "QuickNetLarge": (77.0, 31.7)}
