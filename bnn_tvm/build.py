"""compile(): Relax module or model file in, deployable artifact out."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import tvm
from tvm import relax

from . import relay_ops  # noqa: F401  (registers relax.bnn.*)
from . import targets as _targets
from .pretuned import shipped_database
from .schedule_pass import apply_default_schedules
from .signature import LEGACY_SIGNATURE_FUNCTION, SIGNATURE_FUNCTION, Signature
from .strategies import legalize_binary_ops
from .tuning_database import RECORD_FILE, apply_tuning_records


def legalize(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The graph up to fused TIR functions, before scheduling: what compiling and tuning share."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with target:
        # The binary ops first, with the target's accumulation; TVM's LegalizeOps then finds none of them left.
        passes = cpu.library_dispatch_passes(target) + [legalize_binary_ops(target)] + cpu.legalize_passes(target)
        return tvm.transform.Sequential(passes)(mod)


def _pipeline(target: tvm.target.Target, databases=(), report=None):
    """TVM's CPU pipeline with our schedules applied between fusion and lowering.

    Functions with a record in one of ``databases`` (MetaSchedule database folders, the first that has a
    record wins) get its best schedule; the rest get the default schedules. ``report(tuned, total, folder)``
    hears, per folder, how many functions it scheduled.
    """
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="bnn_tvm.Pipeline")
    def _run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = legalize(mod, target)
        with target:
            for folder in databases:
                # A function scheduled by an earlier folder no longer matches its workload: later ones skip it.
                mod = apply_tuning_records(mod, target, folder,
                                           report and (lambda tuned, total, f=folder: report(tuned, total, f)))
            passes = (
                [apply_default_schedules(target)]
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _run


KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


def load_model(model, input_shapes=None, trust_model_code: bool = False) -> tvm.IRModule:
    """A Relax module from an IRModule, a .tflite path or bytes, a Keras model or a Keras model path
    (.h5, .keras, or a SavedModel folder).

    ``input_shapes`` (``{input name: shape}``, one shape for a single-input model, or tvmc's
    ``--input-shapes`` text) sets the shapes a Keras model leaves open: the batch (1 by default), a variable
    height and width. A .tflite file (or an IRModule) has its shapes baked in: they may only be repeated.
    ``trust_model_code=True`` lets a Keras model file run the Python code it carries (Lambda layers, see
    ``bnn_tvm.frontend.keras.load_keras_model``): only for files you trust; without it such files are refused.
    A SavedModel folder goes through Keras when Keras can and may rebuild it, else through its traced
    serving graph, which runs no code from the folder (``bnn_tvm.frontend.saved_model``).
    """
    from .frontend.input_shapes import resolve_input_shapes

    if isinstance(model, tvm.IRModule) or isinstance(model, (bytes, bytearray)) or (
            isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".tflite"):
        from .frontend import from_tflite

        mod = model if isinstance(model, tvm.IRModule) else from_tflite(model)
        if input_shapes is not None:
            where = "the model" if isinstance(model, (tvm.IRModule, bytes, bytearray)) else str(model)
            resolve_input_shapes([(p.name, [int(d) for d in p.ty.shape.values]) for p in mod["main"].params],
                                 input_shapes, where, fixed_reason="a .tflite model has its shapes baked in: "
                                 "convert it again at the shape you want (or compile the Keras model)")
        return mod
    _require_keras_extra(model)
    if isinstance(model, (str, os.PathLike)) and (Path(model) / "saved_model.pb").is_file():
        from .frontend.saved_model import from_saved_model_folder

        return from_saved_model_folder(model, input_shapes, trust_model_code)
    if not isinstance(model, (str, os.PathLike)) or Path(model).suffix in KERAS_SUFFIXES or (
            Path(model) / "saved_model.pb").exists():
        from .frontend import from_keras

        return from_keras(model, input_shapes, trust_model_code)
    raise ValueError(f"cannot import {model!r}: bnn-tvm reads .tflite files (LCE-converted or stock) and Keras "
                     f"models ({', '.join(KERAS_SUFFIXES)} or a SavedModel folder)")


def _require_keras_extra(model) -> None:
    """Keras models need TensorFlow, larq and larq-zoo, which only the ``[larq]`` extra installs."""
    import importlib.util

    names = ("tensorflow", "tf_keras", "larq", "larq_zoo")
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing and isinstance(model, (str, os.PathLike)):
        raise ImportError(f"{model}: a Keras or SavedModel model needs TensorFlow and Larq, not installed here "
                          f"(no {', '.join(missing)}): install bnn-tvm's [larq] extra (pip install "
                          f"'bnn-tvm[larq]'), or convert the model to .tflite where they are")


def import_model(model, graph_passes: bool = True, input_shapes=None, trust_model_code: bool = False) -> tvm.IRModule:
    """``load_model`` (with ``input_shapes`` and ``trust_model_code``) then, unless ``graph_passes`` is False,
    the graph passes of ``bnn_tvm.transform``: the module that compiling and tuning start from."""
    from .transform import optimize

    mod = load_model(model, input_shapes, trust_model_code)
    return optimize(mod) if graph_passes else mod


def _with_signature(mod: tvm.IRModule, named: tvm.IRModule) -> tvm.IRModule:
    """Add a function returning the model's signature (``bnn_tvm.signature``; JSON, which crosses RPC as a
    plain string), so that whoever runs the .so can feed and check its inputs without the model file.
    ``named`` is the module as imported, whose ``main`` carries the frontend's output names."""
    signature = Signature.of(named)
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    # The inputs' shapes and dtypes alone, as bnn-tvm before 0.4 recorded them, under their old name: what
    # tools written for those .so files read (the reference ARM instrument, ../shared/armcount, does).
    legacy = json.dumps([[list(s.shape), s.dtype] for s in signature.inputs])
    for name, text in ((SIGNATURE_FUNCTION, signature.to_json()), (LEGACY_SIGNATURE_FUNCTION, legacy)):
        function = relax.Function([], tvm.ir.StringImm(text), is_pure=True)
        mod[name] = function.with_attr("global_symbol", name)
    return mod


class TuningRecordsError(ValueError):
    """A ``tuning_records`` folder that holds no tuning database."""


def _check_records_folder(folder) -> None:
    """Before the minutes of compiling: the folder ``bnn-tvm tune --log`` wrote, with its records file."""
    path = Path(folder)
    if not path.is_dir():
        raise TuningRecordsError(f"{folder}: no such folder: --tuning-records takes the folder that "
                                 f"`bnn-tvm tune --log` wrote")
    if not (path / RECORD_FILE).is_file():
        raise TuningRecordsError(f"{folder}: holds no tuning records ({RECORD_FILE}); --tuning-records takes "
                                 f"the folder that `bnn-tvm tune --log` wrote")


class Artifact:
    """A compiled model: a Relax VM executable for one target."""

    def __init__(self, executable: relax.VMExecutable, target: tvm.target.Target, preset=None,
                 binary_layers: int | None = None):
        self.executable = executable
        self.target = target
        self.preset = preset
        self.binary_layers = binary_layers  # binary convolutions and dense layers in the graph

    def export_library(self, path: str | os.PathLike, cross_compiler: str | None = None,
                       cross_compiler_options: list[str] | None = None) -> Path:
        """Write one self-contained .so (weights inside), atomically.

        It links with ``cross_compiler`` (default: the preset's, or the host's C++ compiler) and its
        ``cross_compiler_options``, as tvmc's flags of those names: an Android NDK's clang, say.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {}
        linker = cross_compiler or (self.preset.cross_compiler if self.preset is not None else None)
        if linker or cross_compiler_options:
            kwargs["fcompile"] = tvm.support.cc.cross_compiler(linker or tvm.support.cc.get_cc(),
                                                               options=cross_compiler_options or [])
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".so", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            self.executable.export_library(str(tmp_path), **kwargs)
            os.replace(tmp_path, path)
        finally:
            tmp_path.unlink(missing_ok=True)
        return path


def compile(model, target="host", tuning_records=None, report=None,  # noqa: A001 - as tvm.compile
            graph_passes: bool = True, input_shapes=None, trust_model_code: bool = False,
            pretuned: bool = True) -> Artifact:
    """Compile a model (see ``load_model``, which also says what ``input_shapes`` and ``trust_model_code`` do:
    the latter runs code the model file carries) for ``target``.

    ``tuning_records``: a folder written by ``bnn_tvm.tune``; its best schedules replace the defaults for
    the functions it has records of. Then, unless ``pretuned=False``, the database bnn-tvm ships for the
    target's preset (``bnn_tvm.pretuned``) schedules the functions left. ``report(tuned, total, folder)`` is
    told, per folder applied, how many functions it scheduled.
    ``graph_passes=False`` skips ``bnn_tvm.transform`` (to compare against what it optimizes).
    """
    from .transform import optimize

    if tuning_records is not None:
        _check_records_folder(tuning_records)
    imported = load_model(model, input_shapes, trust_model_code)
    mod = _with_signature(optimize(imported) if graph_passes else imported, imported)
    tvm_target, preset = _targets.resolve(target)
    shipped = shipped_database(preset.name) if pretuned and preset is not None else None
    pipeline = _pipeline(tvm_target, [f for f in (tuning_records, shipped) if f is not None], report)
    executable = tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline)
    return Artifact(executable, tvm_target, preset, _binary_layers(mod))


def _binary_layers(mod: tvm.IRModule) -> int:
    from .transform._rewrite import BINARY_MAC_OPS

    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(
        isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name in BINARY_MAC_OPS))
    return sum(found)
