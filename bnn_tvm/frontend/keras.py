"""Import Keras / Larq models into Relax, binary layers as ``relax.bnn`` ops.

A layer whose input quantizer is a sign (x < 0 -> -1, else +1: ste_sign, approx_sign, swish_sign) and
whose quantized kernel is +-s per output channel (ste_sign, magnitude_aware_sign, XNOR-Net's scaled
sign, ...) becomes ``quantize`` + ``bconv2d`` / ``bdense`` with ``s`` as the multiplier. Both are
decided from what the quantizers compute (:mod:`.keras_quantizers`). Any other quantizer is computed in
float, with a warning naming the layer.

The importer emits the plain form (bconv2d with float output, then bias, activation, batch-norm as
separate ops); ``bnn_tvm.transform`` folds them into the binary ops' output transform.
Lambda and TFOpLambda layers are traced and converted op by op (:mod:`.tf_graph`).

Reading a model file runs no code from it unless the caller trusts it (:mod:`.keras_file`). A SavedModel
folder is treated alike (its Keras metadata holds the same layer configs); its traced serving graph needs
no Python code, which is the safe route for such models.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import tvm
from tvm import relax

from .. import relay_ops as ops
from ..relay_ops._common import same_padding
from ..relay_ops.bitpack import quantize_ref
from ..signature import with_names
from .block_builder import main_function
from .errors import FloatFallbackWarning, UnsupportedModelError
from .input_shapes import resolve_input_shapes
from .keras_file import load_keras_model
from .keras_quantizers import binary_scale, is_sign, pack_filter, quantizer_name
from .tf_graph import convert_traced


def from_keras(model, input_shapes=None, trust_model_code: bool = False) -> tvm.IRModule:
    """Import a Keras/Larq model (object or .h5 / .keras / SavedModel path) into Relax.

    Parameters
    ----------
    model : tf.keras.Model or path
        See ``load_keras_model``.
    input_shapes : dict, list or str, optional
        Static shapes of the inputs, ``{name: shape}`` (or one shape for a single-input model, or tvmc's
        ``--input-shapes`` text): they fill the dimensions the model leaves open (variable height and width,
        the batch, 1 by default) and must agree with the rest.
    trust_model_code : bool
        Run Python code the model file carries; see ``load_keras_model``.

    Raises
    ------
    UnsupportedModelError
        Naming the layer (name and class) that cannot be converted, or the input whose shape is unknown.
    """
    where = str(model) if isinstance(model, (str, os.PathLike)) else None
    keras_model = load_keras_model(model, trust_model_code)
    return _KerasImporter(keras_model, input_shapes, where or f"model {keras_model.name}").run()


def _pair(value) -> tuple[int, int]:
    value = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    return int(value[0]), int(value[1])


def _shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


class _KerasImporter:
    def __init__(self, model, input_shapes, where: str):
        import tensorflow as tf

        self.tf = tf
        self.model = model
        self.input_shapes, self.where = input_shapes, where
        self.bb = relax.BlockBuilder()
        self.converters = {
            "InputLayer": None,
            "QuantConv2D": self._conv2d,
            "Conv2D": self._conv2d,
            "QuantDepthwiseConv2D": self._conv2d,
            "DepthwiseConv2D": self._conv2d,
            "QuantDense": self._dense,
            "Dense": self._dense,
            "BatchNormalization": self._batch_norm,
            "Activation": lambda layer, x: self._activation(layer, layer.activation, x),
            "ReLU": self._relu,
            "PReLU": self._prelu,
            "LeakyReLU": lambda layer, x: relax.op.nn.leakyrelu(x, float(layer.alpha)),
            "Softmax": lambda layer, x: relax.op.nn.softmax(x, axis=int(layer.axis)),
            "MaxPooling2D": self._pool,
            "AveragePooling2D": self._pool,
            "GlobalAveragePooling2D": self._global_pool,
            "GlobalMaxPooling2D": self._global_pool,
            "Add": lambda layer, xs: self._fold(relax.op.add, xs),
            "Subtract": lambda layer, xs: relax.op.subtract(*xs),
            "Multiply": lambda layer, xs: self._fold(relax.op.multiply, xs),
            "Maximum": lambda layer, xs: self._fold(relax.op.maximum, xs),
            "Minimum": lambda layer, xs: self._fold(relax.op.minimum, xs),
            "Average": lambda layer, xs: relax.op.divide(
                self._fold(relax.op.add, xs), relax.const(float(len(xs)), "float32")),
            "Concatenate": lambda layer, xs: relax.op.concat(list(xs), axis=int(layer.axis)),
            "ZeroPadding2D": self._zero_padding,
            "Flatten": lambda layer, x: relax.op.reshape(x, [_shape(x)[0], -1]),
            "Reshape": lambda layer, x: relax.op.reshape(x, [_shape(x)[0], *layer.target_shape]),
            "Permute": lambda layer, x: relax.op.permute_dims(x, [0, *layer.dims]),
            "Dropout": lambda layer, x: x,
            "SpatialDropout2D": lambda layer, x: x,
            "GaussianNoise": lambda layer, x: x,
            "Lambda": None,  # traced: see _traced
            "TFOpLambda": None,
        }

    # ------------------------------------------------------------ graph walk

    def run(self) -> tvm.IRModule:
        model = self.model
        names = [tensor.name.split(":")[0] for tensor in model.inputs]
        declared = [[None if d is None else int(d) for d in tensor.shape] for tensor in model.inputs]
        shapes = resolve_input_shapes(list(zip(names, declared, strict=True)), self.input_shapes, self.where)
        params = [relax.Var(name.replace("/", "_"), relax.TensorType(list(shape), tensor.dtype.name))
                  for name, shape, tensor in zip(names, shapes, model.inputs, strict=True)]
        with main_function(self.bb, params):
            with self.bb.dataflow():
                outputs = self._convert_model(model, params)
                result = outputs[0] if len(outputs) == 1 else relax.Tuple(outputs)
                out = self.bb.emit_output(result)
            self.bb.emit_func_output(out)
        return with_names(self.bb.get(), names, model.output_names)

    def _convert_model(self, model, inputs: list[relax.Expr]) -> list[relax.Expr]:
        """Convert a functional (or Sequential) model's graph, node by node in Keras's own order."""
        tf = self.tf
        if not getattr(model, "_is_graph_network", False):
            raise UnsupportedModelError(
                f"model {model.name}: subclassed Keras models have no graph to import; "
                "build it with the functional API or Sequential (with an input shape)")
        values = {id(t): x for t, x in zip(model.inputs, inputs, strict=True)}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input:
                    continue
                layer = node.layer

                def lookup(t):
                    return values[id(t)] if hasattr(t, "_keras_history") else t

                args = tf.nest.map_structure(lookup, node.call_args)
                kwargs = tf.nest.map_structure(lookup, node.call_kwargs)
                outputs = self._convert_layer(layer, args, kwargs)
                for tensor, value in zip(tf.nest.flatten(node.outputs), outputs, strict=True):
                    values[id(tensor)] = value
        return [values[id(t)] for t in model.outputs]

    def _convert_layer(self, layer, args, kwargs) -> list[relax.Expr]:
        kind = type(layer).__name__
        where = f"layer {layer.name} ({kind})"
        if isinstance(layer, self.tf.keras.Model):
            flat = [a for a in self.tf.nest.flatten(args) if isinstance(a, relax.Expr)]
            return self._convert_model(layer, flat)
        if kind in ("Lambda", "TFOpLambda"):
            return self._traced(layer, args, kwargs, where)
        if kind not in self.converters:
            raise UnsupportedModelError(
                f"{where}: unsupported layer; the Keras importer knows {', '.join(sorted(self.converters))} "
                "(and Lambda layers built from TensorFlow ops)")
        data_format = getattr(layer, "data_format", "channels_last")
        if data_format != "channels_last":
            raise UnsupportedModelError(f"{where}: data_format {data_format!r}; only channels_last is supported")
        try:
            out = self.converters[kind](layer, args[0])
            return [self.bb.emit(out) if not isinstance(out, relax.Var) else out]  # emitting infers shapes: may fail
        except UnsupportedModelError:
            raise
        # What TVM 0.27 raises on ops it cannot build (shape inference raises ValueError; there is no tvm.TVMError).
        except (ValueError, TypeError, IndexError, tvm.error.InternalError, tvm.error.OpError,
                tvm.error.DiagnosticError) as err:
            raise UnsupportedModelError(f"{where}: {err}") from err

    def _traced(self, layer, args, kwargs, where) -> list[relax.Expr]:
        tf = self.tf
        flat = tf.nest.flatten((args, kwargs))
        positions = [i for i, a in enumerate(flat) if isinstance(a, relax.Expr)]

        def call(*tensors):
            filled = list(flat)
            for i, t in zip(positions, tensors, strict=True):
                filled[i] = t
            call_args, call_kwargs = tf.nest.pack_sequence_as((args, kwargs), filled)
            return layer(*call_args, **call_kwargs)

        return convert_traced(self.bb, call, [flat[i] for i in positions], where)

    # ------------------------------------------------------------ layers

    def _conv2d(self, layer, x):
        depthwise = "Depthwise" in type(layer).__name__
        kernel = (layer.depthwise_kernel if depthwise else layer.kernel).numpy()
        kernel_quantizer = getattr(layer, "depthwise_quantizer" if depthwise else "kernel_quantizer", None)
        input_quantizer = getattr(layer, "input_quantizer", None)
        if kernel_quantizer is not None:
            kernel = np.asarray(kernel_quantizer(kernel), dtype=np.float32)
        strides, dilation = _pair(layer.strides), _pair(layer.dilation_rate)
        kernel_size = kernel.shape[:2]
        pad_value = float(getattr(layer, "pad_values", 0.0))
        binary_input, scale = is_sign(input_quantizer), binary_scale(kernel)
        groups = 1 if depthwise else _shape(x)[-1] // kernel.shape[2]
        # bconv2d packs each group into whole words; other groupings compute the same +-1 products in float.
        packable = not depthwise and (groups == 1 or kernel.shape[2] % 32 == 0)
        if binary_input and scale is not None and packable and pad_value in (0.0, 1.0):
            y = self._bconv2d(layer, x, kernel, scale, strides, dilation, pad_value)
        else:
            self._warn_float(layer, input_quantizer, binary_input, kernel_quantizer, scale)
            x = self._quantize_float(layer, input_quantizer, binary_input, x)
            pads = self._padding(layer.padding, _shape(x), kernel_size, strides, dilation)
            if pad_value != 0.0 and any(pads):
                x = self.bb.emit(relax.op.nn.pad(x, [0, 0, pads[0], pads[2], pads[1], pads[3], 0, 0],
                                                 pad_value=pad_value))
                pads = [0, 0, 0, 0]
            if depthwise:
                weight, layout, groups = kernel.reshape(*kernel_size, -1, 1), "HWOI", _shape(x)[-1]
            else:
                weight, layout = kernel, "HWIO"
            y = relax.op.nn.conv2d(x, relax.const(weight.astype(np.float32)), strides=strides, padding=pads,
                                   dilation=dilation, groups=groups, data_layout="NHWC", kernel_layout=layout)
        return self._bias_and_activation(layer, y)

    def _bconv2d(self, layer, x, kernel, scale, strides, dilation, pad_value):
        channels_in = _shape(x)[-1]
        channels_out = kernel.shape[-1]
        packed = self.bb.emit(ops.quantize(x))
        # SAME that pads nothing (1x1 kernels) is VALID, which keeps fused activations and bitpacked output open.
        pads = self._padding(layer.padding, _shape(x), kernel.shape[:2], strides, dilation)
        padding = "SAME" if any(pads) else "VALID"
        return ops.bconv2d(
            packed, relax.const(pack_filter(kernel)), channels_in=channels_in,
            multiplier=relax.const(scale), bias=relax.const(np.zeros(channels_out, np.float32)),
            strides=strides, dilations=dilation, padding=padding, pad_value=int(pad_value) if any(pads) else 1)

    def _dense(self, layer, x):
        kernel = layer.kernel.numpy()
        kernel_quantizer = getattr(layer, "kernel_quantizer", None)
        input_quantizer = getattr(layer, "input_quantizer", None)
        if kernel_quantizer is not None:
            kernel = np.asarray(kernel_quantizer(kernel), dtype=np.float32)
        binary_input, scale = is_sign(input_quantizer), binary_scale(kernel)
        leading = _shape(x)[:-1]
        if len(leading) > 1:
            x = self.bb.emit(relax.op.reshape(x, [-1, _shape(x)[-1]]))
        if binary_input and scale is not None:
            packed = self.bb.emit(ops.quantize(x))
            y = ops.bdense(packed, relax.const(quantize_ref(np.ascontiguousarray(kernel.T))),
                           channels_in=kernel.shape[0], multiplier=relax.const(scale),
                           bias=relax.const(np.zeros(kernel.shape[1], np.float32)))
        else:
            self._warn_float(layer, input_quantizer, binary_input, kernel_quantizer, scale)
            x = self._quantize_float(layer, input_quantizer, binary_input, x)
            y = relax.op.matmul(x, relax.const(kernel.astype(np.float32)))
        if len(leading) > 1:
            y = relax.op.reshape(self.bb.emit(y), [*leading, kernel.shape[1]])
        return self._bias_and_activation(layer, y)

    def _warn_float(self, layer, input_quantizer, binary_input, kernel_quantizer, scale) -> None:
        reasons = []
        if input_quantizer is not None and not binary_input:
            reasons.append(f"input quantizer {quantizer_name(input_quantizer)} is not a binary sign")
        if kernel_quantizer is not None and scale is None:
            reasons.append(f"kernel quantizer {quantizer_name(kernel_quantizer)} is not binary")
        if reasons:
            warnings.warn(f"layer {layer.name} ({type(layer).__name__}) is computed in float: "
                          + "; ".join(reasons), FloatFallbackWarning, stacklevel=2)

    def _quantize_float(self, layer, quantizer, binary_input, x):
        if quantizer is None:
            return x
        if binary_input:
            one = relax.const(1.0, "float32")
            return self.bb.emit(relax.op.where(relax.op.less(x, relax.const(0.0, "float32")),
                                               relax.op.negative(one), one))
        where = f"layer {layer.name} ({type(layer).__name__}), input quantizer {quantizer_name(quantizer)}"
        return convert_traced(self.bb, quantizer, [x], where)[0]

    def _bias_and_activation(self, layer, y):
        if getattr(layer, "use_bias", False):
            y = relax.op.add(self.bb.emit(y), relax.const(layer.bias.numpy().astype(np.float32)))
        return self._activation(layer, layer.activation, y)

    def _activation(self, layer, activation, x):
        name = getattr(activation, "__name__", str(activation))
        if name == "linear":
            return x
        x = self.bb.emit(x) if not isinstance(x, relax.Var) else x
        simple = {
            "relu": relax.op.nn.relu,
            "sigmoid": relax.op.sigmoid,
            "tanh": relax.op.tanh,
            "softmax": lambda t: relax.op.nn.softmax(t, axis=-1),
            "relu6": lambda t: relax.op.clip(t, 0, 6),
            "hard_tanh": lambda t: relax.op.clip(t, -1, 1),
            "swish": relax.op.nn.silu,
            "silu": relax.op.nn.silu,
        }
        if name in simple:
            return simple[name](x)
        where = f"layer {layer.name} ({type(layer).__name__}), activation {name}"
        return convert_traced(self.bb, activation, [x], where)[0]

    def _relu(self, layer, x):
        max_value = None if layer.max_value is None else float(layer.max_value)
        slope, threshold = float(layer.negative_slope), float(layer.threshold)
        if slope == 0.0 and threshold == 0.0:
            return relax.op.nn.relu(x) if max_value is None else relax.op.clip(x, 0, max_value)
        return convert_traced(self.bb, layer, [x], f"layer {layer.name} (ReLU)")[0]

    def _prelu(self, layer, x):
        alpha = relax.const(layer.alpha.numpy().astype(np.float32))
        negative = relax.op.multiply(alpha, relax.op.minimum(x, relax.const(0.0, "float32")))
        return relax.op.add(relax.op.nn.relu(x), negative)

    def _batch_norm(self, layer, x):
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        rank = len(_shape(x))
        if [a % rank for a in axes] != [rank - 1]:
            raise UnsupportedModelError(f"layer {layer.name} (BatchNormalization): axis {layer.axis}; "
                                        "only the channel axis (last) is supported")
        channels = _shape(x)[-1]
        gamma = layer.gamma.numpy() if layer.scale else np.ones(channels, np.float32)
        beta = layer.beta.numpy() if layer.center else np.zeros(channels, np.float32)
        # As tf.nn.batch_normalization computes it: x * (gamma * rsqrt(var + eps)) + (beta - mean * that).
        inv = (gamma / np.sqrt(layer.moving_variance.numpy() + np.float32(layer.epsilon))).astype(np.float32)
        shift = (beta - layer.moving_mean.numpy() * inv).astype(np.float32)
        return relax.op.add(self.bb.emit(relax.op.multiply(x, relax.const(inv))), relax.const(shift))

    def _pool(self, layer, x):
        pool, strides = _pair(layer.pool_size), _pair(layer.strides)
        pads = self._padding(layer.padding, _shape(x), pool, strides, (1, 1))
        if type(layer).__name__ == "MaxPooling2D":
            return relax.op.nn.max_pool2d(x, pool, strides, pads, layout="NHWC")
        # Keras averages over the window's inside only.
        return relax.op.nn.avg_pool2d(x, pool, strides, pads, layout="NHWC", count_include_pad=False)

    def _global_pool(self, layer, x):
        reduce = relax.op.mean if "Average" in type(layer).__name__ else relax.op.max
        return reduce(x, [1, 2], keepdims=bool(getattr(layer, "keepdims", False)))

    def _zero_padding(self, layer, x):
        (top, bottom), (left, right) = layer.padding
        return relax.op.nn.pad(x, [0, 0, int(top), int(bottom), int(left), int(right), 0, 0])

    @staticmethod
    def _padding(padding: str, shape, kernel, strides, dilation) -> list[int]:
        """[top, left, bottom, right] of Keras's ``same`` / ``valid``."""
        if padding == "valid":
            return [0, 0, 0, 0]
        _, top, bottom = same_padding(shape[1], kernel[0], strides[0], dilation[0])
        _, left, right = same_padding(shape[2], kernel[1], strides[1], dilation[1])
        return [top, left, bottom, right]

    @staticmethod
    def _fold(op, xs):
        out = xs[0]
        for x in xs[1:]:
            out = op(out, x)
        return out
