"""The model file each engine of ``bnn-tvm bench`` runs: given, converted from a Keras model, or a larq-zoo
architecture's cached conversions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .engines import BenchError


@dataclass
class Subject:
    """What is benchmarked: the file bnn-tvm compiles, and the model file each other engine runs."""

    name: str
    description: str
    bnn_model: Path
    models: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def is_file_like(model: str) -> bool:
    """Whether ``model`` names a file (an existing path, or one with a suffix or a folder) rather than a larq-zoo
    architecture."""
    path = Path(model)
    return path.exists() or bool(path.suffix) or os.sep in model


def prepare(model: str, against: list[str], size: int, workdir: Path) -> Subject:
    """Find or make the model file of each engine; an engine that cannot run this model is skipped, with why.

    A larq-zoo architecture (random, seeded initialisation, without its final softmax, which saturates on random
    weights and would hide differences): LCE's conversion for bnn-tvm and LCE, the stock TFLite converter's for
    TFLite, both cached by ``bnn_tvm.zoo``. A Keras model file: bnn-tvm compiles it, LCE and TFLite run its
    conversions by LCE and by the stock converter (written to ``workdir``). A .tflite: bnn-tvm compiles it; LCE
    runs it if LCE converted it, TFLite if it is a stock conversion (the float model itself).
    """
    if not is_file_like(model):
        return _prepare_zoo(model, against, size)
    path = Path(model)
    subject = Subject(path.stem, str(path), path)
    if path.suffix == ".tflite":
        lce_made = _has_lce_ops(path)
        for engine in against:
            if (engine == "lce") == lce_made:
                subject.models[engine] = path
            elif engine == "lce":
                subject.skipped[engine] = "a stock .tflite has no LCE ops: LCE would run the same float model"
            else:
                subject.skipped[engine] = ("an LCE-converted .tflite has no float equivalent here: give the Keras "
                                           "model to compare against TFLite")
        return subject
    from .. import zoo
    from ..frontend.keras_file import load_keras_model

    keras = load_keras_model(path)
    converters = {"lce": (zoo.convert, "lce.tflite"), "tflite": (zoo.convert_stock, "float.tflite")}
    for engine in against:
        convert, filename = converters[engine]
        subject.models[engine] = workdir / filename
        subject.models[engine].write_bytes(convert(keras))
    return subject


def _prepare_zoo(architecture: str, against: list[str], size: int) -> Subject:
    from .. import zoo

    try:
        import larq_zoo
    except ImportError as err:
        raise BenchError(f"a larq-zoo architecture needs the larq extra (pip install bnn-tvm[larq]): {err}") from err
    if not any(hasattr(family, architecture) for family in (larq_zoo.sota, larq_zoo.literature)):
        raise BenchError(f"{architecture!r} is neither a model file nor a larq-zoo architecture")
    case = zoo.ZooCase(f"{architecture}-{size}-logits", architecture, size=size)
    lce_model = zoo.cached_tflite(case, zoo.keras_logits_model)
    subject = Subject(f"{architecture}-{size}", f"larq-zoo {architecture} {size}x{size} (random weights, logits)",
                      lce_model)
    for engine in against:
        subject.models[engine] = lce_model if engine == "lce" else zoo.cached_stock_tflite(case,
                                                                                           zoo.keras_logits_model)
    return subject


def _has_lce_ops(path: Path) -> bool:
    import tflite

    from ..frontend.tflite_check import opcode_names

    names = opcode_names(tflite.Model.GetRootAsModel(path.read_bytes(), 0)).values()
    return any(name.startswith("Lce") for name in names)
