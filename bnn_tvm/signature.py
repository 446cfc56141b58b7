"""A model's signature: the names, shapes and dtypes of its inputs and outputs.

``bnn_tvm.compile`` records it in the .so (the VM function ``SIGNATURE_FUNCTION``, a JSON string that crosses
RPC as plain text, read by ``bnn_tvm.runtime`` and the bundle's ``bnn-run``), so that a model can be fed and
its inputs checked by whoever runs it, without the model file it came from. The names are the model's own:
a .tflite file's signature keys (else its tensor names), a Keras model's input and output layer names, a
SavedModel signature's keys. Frontends that know the outputs' names record them on ``main``
(``with_names``); outputs without one are ``output_0``, ``output_1``...

This module also reads what a user gives as inputs (``.npy``, ``.npz``) and writes outputs, for the CLI,
the benchmark and the profiler alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SIGNATURE_FUNCTION = "bnn_signature"
LEGACY_SIGNATURE_FUNCTION = "bnn_input_signature"  # before 0.4: the inputs' [[shape, dtype], ...] only
INPUT_NAMES_ATTR, OUTPUT_NAMES_ATTR = "bnn_input_names", "bnn_output_names"


class InputError(ValueError):
    """An input that does not fit the model: unknown name, wrong shape or dtype, unreadable file."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        return f"{self.dtype} [{','.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    # ------------------------------------------------------------------ recording

    @classmethod
    def of(cls, mod) -> Signature:
        """The signature of ``mod["main"]``: its parameters and results, named as ``with_names`` recorded
        (else the parameters' names and ``output_0``, ``output_1``...)."""
        main = mod["main"]
        results = _flat_tensor_types(main.ret_ty)

        def recorded(attr, count, default, kind):
            """The frontend's names, else the defaults; names are keys, so a model repeating one (a damaged
            file can) gets its inputs' or outputs' positions instead."""
            names = [str(n) for n in main.attrs[attr]] if main.attrs and attr in main.attrs else []
            names = names if len(names) == count else default
            return names if len(set(names)) == count else [f"{kind}_{i}" for i in range(count)]

        inputs = recorded(INPUT_NAMES_ATTR, len(main.params), [p.name for p in main.params], "input")
        outputs = recorded(OUTPUT_NAMES_ATTR, len(results), [f"output_{i}" for i in range(len(results))], "output")
        return cls(tuple(_spec(n, p.ty) for n, p in zip(inputs, main.params, strict=True)),
                   tuple(_spec(n, t) for n, t in zip(outputs, results, strict=True)))

    def to_json(self) -> str:
        def specs(group):
            return [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in group]

        return json.dumps({"inputs": specs(self.inputs), "outputs": specs(self.outputs)})

    @classmethod
    def from_json(cls, text: str) -> Signature:
        data = json.loads(text)
        if isinstance(data, list):  # bnn-tvm before 0.4 recorded the inputs only, as [[shape, dtype], ...]
            return cls(tuple(TensorSpec(f"input_{i}", tuple(s), d) for i, (s, d) in enumerate(data)), ())

        def specs(group):
            return tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in group)

        return cls(specs(data["inputs"]), specs(data["outputs"]))

    # ------------------------------------------------------------------ feeding

    def names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def arrange(self, positional=(), named=None) -> list:
        """The inputs in the model's order: ``positional`` ones first, in order, then ``named`` by input name.

        Raises
        ------
        InputError
            For an unknown name, an input given twice or one not given, naming the model's inputs.
        """
        named = dict(named or {})
        if len(positional) > len(self.inputs):
            raise InputError(f"{len(positional)} inputs given; the model takes {self._listing()}")
        arranged = dict(zip(self.names(), positional))
        for name, value in named.items():
            if name not in self.names():
                raise InputError(f"the model has no input {name!r}; it takes {self._listing()}")
            if name in arranged:
                raise InputError(f"input {name!r} is given twice")
            arranged[name] = value
        missing = [n for n in self.names() if n not in arranged]
        if missing:
            raise InputError(f"input {missing[0]!r} is not given; the model takes {self._listing()}")
        return [arranged[n] for n in self.names()]

    def check(self, arrays, sources=None) -> None:
        """Raise ``InputError`` unless each of ``arrays`` (in the model's order) has its input's shape and dtype.

        ``sources`` (one per input, or None) name where each came from: the message starts with it.
        """
        import numpy as np

        for i, (spec, array) in enumerate(zip(self.inputs, arrays, strict=True)):
            source = f"{sources[i]}: " if sources and sources[i] else ""
            if not isinstance(array, np.ndarray):
                raise InputError(f"{source}input {spec.name!r} is a {type(array).__name__}, not a numpy array")
            given = TensorSpec(spec.name, tuple(int(d) for d in array.shape), str(array.dtype))
            if (given.shape, given.dtype) != (spec.shape, spec.dtype):
                hint = ""
                if given.shape == spec.shape[1:]:
                    hint = " (the batch dimension is missing: x[None] adds it)"
                elif given.shape == spec.shape:
                    hint = f" (x.astype('{spec.dtype}') converts it)"
                raise InputError(f"{source}input {spec.name!r} is {given.describe()}, the model takes "
                                 f"{spec.describe()}{hint}")

    def _listing(self) -> str:
        return ", ".join(f"{s.name!r} {s.describe()}" for s in self.inputs)


def _spec(name: str, tensor_type) -> TensorSpec:
    return TensorSpec(name, tuple(int(d) for d in tensor_type.shape.values), str(tensor_type.dtype))


def _flat_tensor_types(ty) -> list:
    from tvm import relax

    if isinstance(ty, relax.TupleType):
        return [t for field in ty.fields for t in _flat_tensor_types(field)]
    return [ty]


def with_names(mod, inputs=None, outputs=None):
    """``mod`` with ``main``'s inputs and outputs named as the model file names them (where its parameters'
    names are not those), which compile records in the signature."""
    import tvm

    main = mod["main"]
    for attr, names in ((INPUT_NAMES_ATTR, inputs), (OUTPUT_NAMES_ATTR, outputs)):
        if names is not None:
            main = main.with_attr(attr, [str(n) for n in names])
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    mod["main"] = main
    return mod


# ---------------------------------------------------------------------- files


def read_inputs(signature: Signature, npz=None, inputs=(), seed: int = 0, say=None) -> list:
    """The model's inputs from the command line's ``--inputs FILE.npz`` (arrays keyed by input name) and
    ``--input [NAME=]FILE.npy`` (a name, or the next input not yet given), checked against ``signature``;
    every input left out is random (seed ``seed``, the input's index added), which ``say`` is told of.

    Raises
    ------
    InputError
        Naming the file and the input: an unknown name, a wrong shape or dtype, a file that is not .npy/.npz.
    """
    import numpy as np

    given, sources = {}, {}
    names = signature.names()
    if npz is not None:
        with _load(npz, ".npz") as archive:
            for key in archive.files:
                if key not in names:
                    raise InputError(f"{npz}: holds {key!r}, which is no input of the model; it takes "
                                     f"{signature._listing()}")
                given[key], sources[key] = archive[key], f"{npz}[{key}]"
    for text in inputs:
        name, path = _split_name(text, names)
        if name is None:
            name = next((n for n in names if n not in given), None)
            if name is None:
                raise InputError(f"{path}: every input of the model is already given ({', '.join(names)})")
        elif name in given:
            raise InputError(f"{path}: input {name!r} is given twice (also {sources[name]})")
        given[name], sources[name] = _load(path, ".npy"), path
    randoms = [(i, spec) for i, spec in enumerate(signature.inputs) if spec.name not in given]
    given.update({spec.name: random_array(spec.shape, spec.dtype, seed + i) for i, spec in randoms})
    arrays = [given[n] for n in names]
    signature.check(arrays, [sources.get(n) for n in names])
    for i, spec in randoms if say is not None else ():
        say(f"random input {spec.name!r} {spec.describe()} (seed {seed + i})")
    return arrays


def _split_name(text: str, names: list[str]) -> tuple[str | None, str]:
    """``NAME=PATH`` when NAME is one of the model's inputs (a path may hold an ``=`` too), else a path."""
    name, sep, path = text.partition("=")
    if sep and name in names:
        return name, path
    if sep and not Path(text).exists() and "/" not in name:
        raise InputError(f"{text}: the model has no input {name!r}; it takes {', '.join(map(repr, names))}")
    return None, text


def _load(path, suffix: str):
    """The array of a .npy file or the archive of an .npz, by their contents rather than their names."""
    import numpy as np

    from .frontend.model_file import checked_model_file

    checked_model_file(path)  # a FIFO would block the read below, a folder fail it
    with open(path, "rb") as file:
        magic = file.read(6)
    if magic[:4] == b"PK\x03\x04" and suffix == ".npy":
        raise InputError(f"{path}: is an .npz archive of several arrays: pass it as --inputs {path}")
    if magic == b"\x93NUMPY" and suffix == ".npz":
        raise InputError(f"{path}: is one .npy array, not an .npz archive: pass it as --input [NAME=]{path}")
    if magic != b"\x93NUMPY" and magic[:4] != b"PK\x03\x04":
        what = "an .npz archive (np.savez writes one)" if suffix == ".npz" else "a .npy file (np.save writes one)"
        raise InputError(f"{path}: is not {what}: it starts with {magic!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # a cut or corrupt file, an array of Python objects
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot be read as {suffix}: {reason}") from None


def random_array(shape, dtype, seed: int):
    """Standard normal floats, or integers over the dtype's whole range."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)
    if np.dtype(dtype).kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dtype)


def save_outputs(path, signature: Signature, outputs: list) -> Path:
    """One output to ``path`` as .npy; several to an .npz keyed by output name (``path``'s suffix made .npz).
    Written beside and renamed into place: a half-written file never has the name."""
    import tempfile

    import numpy as np

    path = Path(path)
    names = [s.name for s in signature.outputs] if len(signature.outputs) == len(outputs) else \
        [f"output_{i}" for i in range(len(outputs))]
    if len(outputs) > 1 and path.suffix != ".npz":
        path = path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=path.suffix, delete=False) as tmp:
        if len(outputs) == 1:
            np.save(tmp, outputs[0])
        else:
            np.savez(tmp, **dict(zip(names, outputs, strict=True)))
    os.replace(tmp.name, path)
    return path


def save_inputs(path, signature: Signature, arrays: list) -> Path:
    """The model's inputs (``arrays``, in ``signature``'s order) to one .npz keyed by input name, which a
    worker process reads back with ``read_worker_inputs``; written beside ``path`` and renamed into place."""
    import numpy as np

    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as file:  # a file object: np.savez would add .npz to a name without it
        np.savez(file, **dict(zip(signature.names(), arrays, strict=True)))
    os.replace(partial, path)
    return path


def read_worker_inputs(path) -> dict:
    """{input name: array} of an .npz by ``save_inputs``, in its order; a .npy's one array as {"": array}."""
    import numpy as np

    with open(path, "rb") as file:
        npy = file.read(6) == b"\x93NUMPY"
    if npy:
        return {"": np.load(path)}
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def input_sources(signature: Signature, inputs_file=None, input_files=()) -> list:
    """Where each of ``signature``'s inputs came from (``FILE.npz[NAME]``, ``FILE.npy``), None for a random one:
    ``read_inputs``' own resolution, for reports; call it once ``read_inputs`` accepted the files."""
    import numpy as np

    names, given = signature.names(), {}
    if inputs_file is not None:
        with np.load(inputs_file) as archive:
            given.update({key: f"{inputs_file}[{key}]" for key in archive.files})
    for text in input_files:
        name, path = _split_name(text, names)
        given[name or next(n for n in names if n not in given)] = path
    return [given.get(name) for name in names]


__all__ = ["InputError", "LEGACY_SIGNATURE_FUNCTION", "OUTPUT_NAMES_ATTR", "SIGNATURE_FUNCTION", "Signature",
           "TensorSpec", "input_sources", "random_array", "read_inputs", "read_worker_inputs", "save_inputs",
           "save_outputs", "with_names"]
