"""Malformed .tflite files are refused with an error naming what is wrong and where, never compiled.

Each case edits a real LCE-converted (or stock-converted) model through the TFLite schema's object
API, or cuts and flips its bytes, and checks the message of the ``UnsupportedModelError``.
"""

import importlib.util
import random
import re
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from flatbuffers import flexbuffers

from bnn_tvm import zoo
from bnn_tvm.frontend import UnsupportedModelError, from_tflite
from bnn_tvm.frontend.errors import ModelFileError
from bnn_tvm.frontend.tflite_check import check_tflite
from tests import fuzzing

C = zoo.ConvCase
BCONV = C("channels32", channels_in=32, channels_out=32)  # ops: 0 LceQuantize, 1 LceBconv2d; 6 tensors
INT8 = C("int8", output="int8", channels_in=33, channels_out=40)
MAXPOOL = C("bmaxpool", output="packed", maxpool=True, channels_out=64)
STOCK = C("stock-relu", activation="relu", batch_norm=False)  # ops: SIGN ADD SIGN PADV2 CONV_2D


def _schema():
    """TensorFlow's generated TFLite schema with the object API, loaded without importing TensorFlow (slow)."""
    package = Path(importlib.util.find_spec("tensorflow").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("tflite_schema", package / "lite/python/schema_py_generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _schema()


def load(case, stock=False):
    path = zoo.cached_stock_tflite(case) if stock else zoo.cached_tflite(case)
    return S.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)


def pack(model) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def refused(data: bytes, tmp_path, *expected: str) -> str:
    """The message refusing ``data`` saved as model.tflite; it names the file and contains each ``expected``."""
    path = tmp_path / "model.tflite"
    path.write_bytes(data)
    with pytest.raises(UnsupportedModelError) as err:
        from_tflite(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def bconv_options(model) -> tuple:
    op = model.subgraphs[0].operators[1]
    assert model.operatorCodes[op.opcodeIndex].customCode == b"LceBconv2d"
    return op, flexbuffers.Loads(bytes(op.customOptions))


def with_options(model, **changes) -> bytes:
    op, options = bconv_options(model)
    op.customOptions = list(flexbuffers.Dumps({**options, **changes}))
    return pack(model)


# ---------------------------------------------------------------- the flatbuffer's structure

def test_real_models_pass_the_check():
    for case, stock in ((BCONV, False), (INT8, False), (MAXPOOL, False), (STOCK, True)):
        path = zoo.cached_stock_tflite(case) if stock else zoo.cached_tflite(case)
        check_tflite(path.read_bytes())
        assert pack(load(case, stock))  # the object API round trip used below keeps models valid
        check_tflite(pack(load(case, stock)))


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, 0.999])
def test_truncated_file_names_the_field_cut_short(keep, tmp_path):
    data = zoo.cached_tflite(BCONV).read_bytes()
    message = refused(data[:int(len(data) * keep)], tmp_path, "outside the file", "truncated or corrupt")
    assert re.search(r"(subgraph|buffer|operator|signature|metadata|description|tensor|model table)", message)


def test_not_a_tflite_file(tmp_path):
    refused(b"\x89HDF\r\n\x1a\n" + bytes(100), tmp_path, "not a TFLite flatbuffer", "file identifier")
    refused(b"TFL", tmp_path, "not a TFLite flatbuffer", "too short")


def test_offset_out_of_bounds_names_its_table(tmp_path):
    data = bytearray(zoo.cached_tflite(BCONV).read_bytes())
    data[0:4] = (len(data) + 64).to_bytes(4, "little")  # the root offset
    refused(bytes(data), tmp_path, "the model table", "outside the file")


# Of the sample's accepted mutants (flipped weight or scale bytes, mostly), how many are compiled and run.
ACCEPTED_RUNS = 6


def test_random_mutations_are_refused_by_name_or_compute_what_lce_computes(build_and_load, tmp_path):
    """A small seeded sample (the fuzz harness runs thousands). Each mutant is either refused with an
    UnsupportedModelError that names where the problem is and what was expected (judged on the message, not
    on the words any message has), or accepted; any other exception is a bug and fails the test. Accepted
    mutants are compiled and must give LCE's interpreter's output on the mutant bit for bit (the model is LCE's
    binary ops only), or LCE's interpreter must refuse the mutant too."""
    data = zoo.cached_tflite(MAXPOOL).read_bytes()
    rng = random.Random(13)
    refusals, accepted = [], []
    for _ in range(150):
        mutated = bytearray(data)
        for _ in range(rng.choice((1, 2, 8))):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            from_tflite(bytes(mutated))
        except UnsupportedModelError as err:
            refusals.append(str(err))
        else:
            accepted.append(bytes(mutated))
    vague = [message for message in refusals if not fuzzing.names_what_is_wrong(message)]
    assert not vague, vague
    assert refusals and accepted, (len(refusals), len(accepted))
    for i, mutant in enumerate(accepted[:ACCEPTED_RUNS]):
        path = tmp_path / f"accepted{i}.tflite"
        path.write_bytes(mutant)
        x = zoo.random_input((1, MAXPOOL.size, MAXPOOL.size, MAXPOOL.channels_in), seed=i)
        try:
            expected = zoo.lce_interpreter(path).predict(x)
        except (RuntimeError, ValueError):  # LCE refuses it too: bnn-tvm must, then
            pytest.fail(f"mutant {i} compiles, but LCE's interpreter refuses it")
        got = build_and_load(path)(x)
        assert got.dtype == expected.dtype and got.shape == expected.shape, (got.shape, expected.shape)
        np.testing.assert_array_equal(got, expected, err_msg=f"accepted mutant {i}")


def test_a_bug_while_converting_is_not_blamed_on_the_model(monkeypatch):
    """Only checked conditions are the model's errors: an exception nothing checked for (a TypeError in a
    converter) is a bug, raised as it is (the CLI then says "This is a bug"), with the operator in a note."""
    from bnn_tvm.frontend.lce_ops import LceOpConverters

    def broken(self, op):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(LceOpConverters, "convert_lce_bmaxpool2d", broken)
    with pytest.raises(TypeError) as err:
        from_tflite(zoo.cached_tflite(MAXPOOL))
    assert not isinstance(err.value, UnsupportedModelError)
    assert any("operator 2 (LceBMaxPool2d)" in note for note in err.value.__notes__), err.value.__notes__


# ---------------------------------------------------------------- indices and data flow

def test_buffer_index_out_of_range(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].tensors[1].buffer = 99
    refused(pack(model), tmp_path, "tensor 1 (", "buffer 99, but the model has 8 buffers")


def test_operator_input_out_of_range(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].operators[1].inputs[1] = 57
    refused(pack(model), tmp_path, "operator 1 (LceBconv2d): input 1 is tensor 57, but the subgraph has 6 tensors")


def test_operator_input_never_computed(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].operators[0].inputs[0] = 5  # the model output, computed by the later operator 1
    refused(pack(model), tmp_path, "operator 0 (LceQuantize): input 0 is tensor 5 (",
            "holds no data, is not an input and no earlier operator computes it")


def test_opcode_index_out_of_range(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].operators[1].opcodeIndex = 7
    refused(pack(model), tmp_path, "operator 1: opcode_index 7, but the model has 2 operator codes")


def test_graph_input_out_of_range(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].inputs = [40]
    refused(pack(model), tmp_path, "input 0 is tensor 40, but the subgraph has 6 tensors")


def test_graph_input_listed_twice(tmp_path):
    model = load(BCONV)
    first = model.subgraphs[0].inputs[0]
    model.subgraphs[0].inputs = [first, first]
    refused(pack(model), tmp_path, f"input 1 is tensor {first} (", f"already input 0")


@pytest.mark.parametrize("builtin, custom, expected", [
    (205, None, "operator code 2 is 'REDUCE_WINDOW', which bnn-tvm cannot convert (no operator uses it"),
    (32, b"LceMystery", "operator code 2 is 'LceMystery', which bnn-tvm cannot convert (no operator uses it"),
])
def test_an_unused_operator_code_must_still_be_convertible(builtin, custom, expected, tmp_path):
    """TFLite resolves every operator code when it loads a file, used or not (LCE's converter leaves unused ones)."""
    model = load(BCONV)
    code = S.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.customCode = builtin, min(builtin, 127), custom
    model.operatorCodes.append(code)
    refused(pack(model), tmp_path, expected)


def test_tensor_computed_twice(tmp_path):
    model = load(STOCK, stock=True)
    model.subgraphs[0].operators[2].outputs = [7]  # operator 1 (ADD) computes tensor 7 already
    refused(pack(model), tmp_path, "operator 2 (SIGN): output 0 is tensor 7 (", "already the output of operator 1")


def test_duplicate_tensor_names(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].tensors[4].name = model.subgraphs[0].tensors[2].name
    refused(pack(model), tmp_path, "tensor 4 (", "has the same name as tensor 2")


def test_constant_of_the_wrong_size(tmp_path):
    model = load(BCONV)
    buffer = model.buffers[model.subgraphs[0].tensors[1].buffer]
    buffer.data = buffer.data[:-4]
    refused(pack(model), tmp_path, "tensor 1 (", "holds 1148 bytes, but shape [32, 3, 3, 1] of int32 needs 1152")


def test_negative_dimension(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].tensors[4].shape[1] = -7
    refused(pack(model), tmp_path, "tensor 4 (", "shape [1, -7, 7, 1] has a negative dimension")


# ---------------------------------------------------------------- the model as a whole

def test_empty_subgraph_is_refused(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].operators = []
    refused(pack(model), tmp_path, "subgraph 0 (the model) has no operators")


def test_no_subgraphs_is_refused(tmp_path):
    model = load(BCONV)
    model.subgraphs, model.signatureDefs = [], []
    refused(pack(model), tmp_path, "the model has no subgraphs")


def test_no_outputs_is_refused(tmp_path):
    model = load(BCONV)
    model.subgraphs[0].outputs = []
    refused(pack(model), tmp_path, "subgraph 0 (the model) has no outputs")


def test_declared_output_dtype_the_op_does_not_compute(tmp_path):
    """The last op is a builtin (CONV_2D) computing float32; the file declares float16 (TFLite refuses)."""
    model = load(STOCK, stock=True)
    model.subgraphs[0].tensors[10].type = S.TensorType.FLOAT16
    refused(pack(model), tmp_path, "operator 4 (CONV_2D): output 0 is tensor 10 ('StatefulPartitionedCall:0'), "
                                   "declared float16, but the operator computes float32")


def test_declared_int8_output_without_quantization(tmp_path):
    model = load(STOCK, stock=True)
    model.subgraphs[0].tensors[10].type = S.TensorType.INT8
    refused(pack(model), tmp_path, "tensor 10 ('StatefulPartitionedCall:0'): a int8 tensor computed at run time "
                                   "needs a quantization scale and zero point")


def test_int8_tensor_without_zero_point(tmp_path):
    model = load(INT8)
    model.subgraphs[0].tensors[3].quantization.zeroPoint = None
    refused(pack(model), tmp_path, "tensor 3 (", "quantization has 1 scales and 0 zero points")


def test_int8_tensor_with_zero_scale(tmp_path):
    model = load(INT8)
    model.subgraphs[0].tensors[5].quantization.scale = np.zeros(1, np.float32)
    refused(pack(model), tmp_path, "tensor 5 (", "quantization scales must be positive, got [0.0]")


# ---------------------------------------------------------------- LCE custom options

def test_pad_values_one_half_is_refused_not_rounded(tmp_path):
    data = with_options(load(BCONV), pad_values=0.5)
    refused(data, tmp_path, "operator 1 (LceBconv2d): custom option pad_values is the float 0.5; expected 0 or 1")


@pytest.mark.parametrize("key, value, expected", [
    ("stride_height", 0, "custom option stride_height is 0; expected an integer from 1"),
    ("dilation_width_factor", -2, "custom option dilation_width_factor is -2; expected an integer from 1"),
    ("padding", 7, "custom option padding is 7; expected 0 (SAME) or 1 (VALID)"),
    ("fused_activation_function", 4, "custom option fused_activation_function is 4; expected 0 (NONE) or 1"),
    ("pad_values", 2, "custom option pad_values is 2; expected 0 or 1"),
    ("stride_width", "two", "custom option stride_width is the non-numeric value"),
    ("stride_width", True, "custom option stride_width is the bool True"),
    ("mystery", 1, "unknown custom options ['mystery']"),
    ("dilation_height_factor", 2**31 - 1,
     "relax.bnn.bconv2d: dilations: a window 4294967295 pixels across (3 taps, dilation 2147483647)"),
])
def test_bad_bconv_option_is_named(key, value, expected, tmp_path):
    refused(with_options(load(BCONV), **{key: value}), tmp_path, f"operator 1 (LceBconv2d): {expected}")


def test_missing_bconv_option(tmp_path):
    model = load(BCONV)
    op, options = bconv_options(model)
    del options["padding"]
    op.customOptions = list(flexbuffers.Dumps(options))
    refused(pack(model), tmp_path, "operator 1 (LceBconv2d): custom option padding is missing")


@pytest.mark.parametrize("garbage", [b"\x0c\x01", b"\xff" * 9 + b"\x1d\x01", bytes(range(40))])
def test_corrupt_custom_options(garbage, tmp_path):
    model = load(BCONV)
    model.subgraphs[0].operators[1].customOptions = list(garbage)
    refused(pack(model), tmp_path, "operator 1 (LceBconv2d): custom_options (", "not a valid flexbuffer map")


def test_bmaxpool_options_are_checked(tmp_path):
    model = load(MAXPOOL)
    for index, op in enumerate(model.subgraphs[0].operators):
        if model.operatorCodes[op.opcodeIndex].customCode == b"LceBMaxPool2d":
            options = flexbuffers.Loads(bytes(op.customOptions))
            op.customOptions = list(flexbuffers.Dumps({**options, "filter_width": 0}))
            break
    refused(pack(model), tmp_path, f"operator {index} (LceBMaxPool2d): custom option filter_width is 0")


# ---------------------------------------------------------------- errors raised while building an operator

def test_error_from_shape_inference_names_the_operator(tmp_path):
    """bconv2d's shape inference runs behind TVM's C++ BlockBuilder, which loses the error's type."""
    refused(with_options(load(BCONV), channels_in=100), tmp_path,
            "operator 1 (LceBconv2d): relax.bnn.bconv2d: channels_in: 100 channels need 4 words, the input has 1")


def test_bare_assertion_in_tvms_frontend_names_the_operator_and_check(tmp_path):
    model = load(STOCK, stock=True)
    conv = model.subgraphs[0].operators[4]
    conv.builtinOptionsType = S.BuiltinOptions.AddOptions  # a CONV_2D claiming ADD's options
    conv.builtinOptions = S.AddOptionsT()
    message = refused(pack(model), tmp_path, "operator 4 (CONV_2D): AssertionError: failed check `assert",
                      "tflite_frontend.py:")
    assert "Conv2DOptions" in message


# ---------------------------------------------------------------- files that are not files

def test_folder_named_tflite_is_refused_before_reading(tmp_path):
    folder = tmp_path / "model.tflite"
    folder.mkdir()
    with pytest.raises(ModelFileError, match=r"model\.tflite: a folder, not a regular file"):
        from_tflite(folder)


def test_declared_shape_the_op_does_not_compute(tmp_path):
    """TFLite computes output shapes itself: reshaping to a declared [1, 81, 1, 32] would change the model."""
    model = load(STOCK, stock=True)
    model.subgraphs[0].tensors[9].shape = np.array([1, 81, 1, 32], np.int32)
    refused(pack(model), tmp_path, "operator 3 (PADV2): output 0 is tensor 9 (",
            "declared shape [1, 81, 1, 32], but the operator computes [1, 9, 9, 32]")


def test_declared_output_shape_with_an_extra_unit_axis(tmp_path):
    """A held-out fuzz run's finding: a model output declared [1, 7, 7, 32, 1] compiled to that shape, where
    LCE's interpreter computes (and answers) [1, 7, 7, 32]."""
    model = load(BCONV)
    graph = model.subgraphs[0]
    output = int(graph.outputs[0])
    computed = [int(d) for d in graph.tensors[output].shape]
    graph.tensors[output].shape = np.array([*computed, 1], np.int32)
    refused(pack(model), tmp_path, f"operator 1 (LceBconv2d): output 0 is tensor {output} (",
            f"declared shape {[*computed, 1]}, but the operator computes {computed}")
