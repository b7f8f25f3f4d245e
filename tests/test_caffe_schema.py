"""mtldata's Caffe schema against bytes and files real BVLC Caffe wrote (shared/fixtures/caffe)."""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import CAFFE_FIXTURES
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mtldata.caffe import caffe_pb2
from mtldata.caffe.blob import (
    array_to_blob,
    blob_to_array,
    read_blob_proto,
    read_mean_file,
    write_blob_proto,
)
from mtldata.caffe.datum import split_datum
from mtldata.caffe.prototxt import (
    UnknownFieldWarning,
    caffemodel_weights,
    read_caffemodel,
    read_net,
    read_solver,
    write_caffemodel,
)
from mtldata.errors import CaffeFileError, DatasetFormatError

FIXTURES = CAFFE_FIXTURES


@pytest.fixture(scope="module")
def caffe_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"Caffe golden fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="module")
def expected(caffe_dir: Path) -> dict:
    return json.loads((caffe_dir / "mt" / "expected.json").read_text())


@pytest.fixture(scope="module")
def lmdb_dump(caffe_dir: Path) -> dict:
    return json.loads((caffe_dir / "lmdb_dump.json").read_text())


@pytest.fixture
def strict_warnings():
    """Turn warnings into errors: the fixture files use only fields the schema knows."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def lmdb_value(db_dir: Path, key: str) -> bytes:
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(db_dir), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            value = txn.get(key.encode())
    finally:
        env.close()
    assert value is not None, f"{key} missing from {db_dir}"
    return value


# --- Datum and BlobProto on the wire --------------------------------------------------------------


def test_raw_image_datum_bytes_match_convert_imageset(caffe_dir: Path, lmdb_dump: dict) -> None:
    record = lmdb_dump["databases"]["lmdb/raw"]["records"][0]
    value = lmdb_value(caffe_dir / "lmdb" / "raw", record["key"])
    pixels = caffe_pb2.Datum.FromString(value).data
    c, h, w, label = record["channels"], record["height"], record["width"], record["label"]
    assert len(pixels) == c * h * w < 2**14  # the length fits a 2-byte varint below
    # 08 C 10 H 18 W 22 len <C*H*W bytes> 28 label 38 00
    size = len(pixels)
    layout = (
        bytes([0x08, c, 0x10, h, 0x18, w, 0x22, 0x80 | (size & 0x7F), size >> 7])
        + pixels
        + bytes([0x28, label, 0x38, 0x00])
    )
    datum = caffe_pb2.Datum(channels=c, height=h, width=w, data=pixels, label=label, encoded=False)
    assert datum.SerializeToString() == layout == value
    assert hashlib.sha256(value).hexdigest() == record["value_sha256"]


def test_label_datum_bytes_match_multilabel_layout(caffe_dir: Path, lmdb_dump: dict) -> None:
    record = lmdb_dump["databases"]["mt/label_lmdb"]["records"][0]
    labels = record["float_data"]
    # 08 K 10 01 18 01, then one unpacked 35 <float32 LE> per label
    layout = bytes([0x08, len(labels), 0x10, 0x01, 0x18, 0x01]) + b"".join(
        b"\x35" + struct.pack("<f", v) for v in labels
    )
    datum = caffe_pb2.Datum(channels=len(labels), height=1, width=1, float_data=labels)
    assert datum.SerializeToString() == layout
    assert hashlib.sha256(layout).hexdigest() == record["value_sha256"]
    assert lmdb_value(caffe_dir / "mt" / "label_lmdb", record["key"]) == layout
    parsed = caffe_pb2.Datum.FromString(layout)
    assert not parsed.HasField("data") and not parsed.HasField("label") and not parsed.HasField("encoded")


def test_negative_label_is_a_ten_byte_varint() -> None:
    assert caffe_pb2.Datum(label=-1).SerializeToString() == b"\x28" + b"\xff" * 9 + b"\x01"


def test_datum_round_trip_keeps_every_field_and_presence() -> None:
    datum = caffe_pb2.Datum(
        channels=3, height=2, width=1, data=bytes(range(6)), label=-7, float_data=[0.5, -2.25], encoded=False
    )
    back = caffe_pb2.Datum.FromString(datum.SerializeToString())
    assert back == datum
    assert back.HasField("encoded") and not back.encoded


# --- split_datum: the pixels as a view, every other field through protobuf ------------------------


def _split_equals_protobuf(value: bytes) -> None:
    """split_datum(value) must read exactly what protobuf reads, or fail as protobuf fails."""
    try:
        whole = caffe_pb2.Datum.FromString(value)
    except DecodeError:
        with pytest.raises(DecodeError):
            split_datum(value)
        return
    datum, data = split_datum(value)
    assert bytes(data) == whole.data
    assert not datum.HasField("data")
    whole.ClearField("data")
    assert datum == whole
    assert datum.SerializeToString() == whole.SerializeToString()  # unknown fields kept alike


_datums = st.builds(
    caffe_pb2.Datum,
    channels=st.integers(0, 2**31 - 1),
    height=st.integers(0, 2**31 - 1),
    width=st.integers(0, 2**31 - 1),
    data=st.binary(max_size=300),
    label=st.integers(-(2**31), 2**31 - 1),
    float_data=st.lists(st.floats(width=32, allow_nan=False), max_size=5),
    encoded=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(_datums)
def test_split_datum_reads_every_serialised_datum_as_protobuf_does(datum) -> None:
    value = datum.SerializeToString()
    _split_equals_protobuf(value)
    if datum.data:  # the view points into the record itself: no copy was made
        _, data = split_datum(value)
        assert data.obj is value


@settings(max_examples=300, deadline=None)
@given(st.lists(_datums, min_size=1, max_size=3), st.binary(max_size=40), st.randoms(use_true_random=False))
def test_split_datum_equals_protobuf_on_merged_reordered_and_damaged_records(parts, noise, rnd) -> None:
    # Several messages concatenated (protobuf merges them: a later data field wins), fields in any
    # order, unknown fields, and arbitrary bytes: split_datum must agree with protobuf every time.
    fields = []
    for part in parts:
        value = part.SerializeToString()
        while value:
            end = _wire_field(value)
            fields.append(value[:end])
            value = value[end:]
    rnd.shuffle(fields)
    _split_equals_protobuf(b"".join(fields))
    _split_equals_protobuf(b"".join(fields) + noise)
    _split_equals_protobuf(noise + b"".join(fields))
    _split_equals_protobuf(b"\x9a\x05\x03abc" + b"".join(fields))  # unknown field 83, length 3
    _split_equals_protobuf(noise)


def _wire_field(value: bytes) -> int:
    """Where the first field of a well-formed serialisation ends (a test helper)."""

    def varint(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            byte = value[pos]
            result |= (byte & 0x7F) << shift
            pos += 1
            shift += 7
            if byte < 0x80:
                return result, pos

    tag, pos = varint(0)
    kind = tag & 7
    if kind == 0:
        return varint(pos)[1]
    if kind == 2:
        length, pos = varint(pos)
        return pos + length
    return pos + (4 if kind == 5 else 8)


def test_split_datum_of_a_convert_imageset_record_views_its_pixels(caffe_dir: Path) -> None:
    import lmdb

    env = lmdb.open(str(caffe_dir / "lmdb" / "raw"), readonly=True, lock=False)
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum, data = split_datum(value)
            whole = caffe_pb2.Datum.FromString(value)
            assert bytes(data) == whole.data and len(data) == whole.channels * whole.height * whole.width
            assert data.obj is value
    env.close()


def test_blob_proto_round_trip_and_packed_data() -> None:
    blob = array_to_blob(np.arange(6, dtype=np.float32).reshape(2, 3))
    wire = blob.SerializeToString()
    back = caffe_pb2.BlobProto.FromString(wire)
    assert back == blob
    assert list(back.shape.dim) == [2, 3]
    assert not back.HasField("num")  # the modern `shape`, not the legacy 4-D fields
    # data = 5 is packed: one tag 0x2a, a length of 24, then 6 little-endian floats.
    assert b"\x2a\x18" + np.arange(6, dtype="<f4").tobytes() in wire


def test_legacy_blob_keeps_all_four_dims() -> None:
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    arr = blob_to_array(blob)
    assert arr.shape == (1, 2, 1, 3) and arr.dtype == np.float32


def test_blob_prefers_double_data_and_checks_count() -> None:
    blob = caffe_pb2.BlobProto(data=[9.0], double_data=[1.5, 2.5])
    blob.shape.dim.append(2)
    assert blob_to_array(blob).tolist() == [1.5, 2.5]
    short = caffe_pb2.BlobProto(data=[1.0])
    short.shape.dim.extend([2, 2])
    with pytest.raises(DatasetFormatError, match="needs 4 values but holds 1"):
        blob_to_array(short)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
        elements=st.floats(width=32, allow_nan=False),
    )
)
def test_array_blob_round_trip_property(arr: np.ndarray) -> None:
    blob = caffe_pb2.BlobProto.FromString(array_to_blob(arr).SerializeToString())
    back = blob_to_array(blob)
    assert back.dtype == np.float32
    assert back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()  # bit-exact, -0.0 and subnormals included


# --- Mean file -----------------------------------------------------------------------------------


def test_mean_binaryproto_matches_dump(caffe_dir: Path, lmdb_dump: dict) -> None:
    info = lmdb_dump["mean_binaryproto"]
    raw = caffe_pb2.BlobProto.FromString((caffe_dir / "mean.binaryproto").read_bytes())
    assert raw.HasField("shape") == info["has_shape_field"]
    full = read_blob_proto(caffe_dir / "mean.binaryproto")
    assert full.shape == (info["num"], info["channels"], info["height"], info["width"])
    mean = read_mean_file(caffe_dir / "mean.binaryproto")
    assert mean.shape == (info["channels"], info["height"], info["width"])
    assert mean.dtype == np.float32
    np.testing.assert_array_equal(mean.ravel(), np.asarray(info["data"], dtype=np.float32))
    np.testing.assert_allclose(mean.mean(axis=(1, 2), dtype=np.float64), info["channel_means"], rtol=1e-9)


def test_mean_file_round_trip_and_errors(tmp_path: Path, caffe_dir: Path) -> None:
    image = np.random.default_rng(0).random((3, 5, 4), dtype=np.float32)
    write_blob_proto(tmp_path / "m.binaryproto", image[None])
    np.testing.assert_array_equal(read_mean_file(tmp_path / "m.binaryproto"), image)

    write_blob_proto(tmp_path / "two.binaryproto", np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(CaffeFileError, match=r"two\.binaryproto.*one image.*\(2, 3, 4, 4\)"):
        read_mean_file(tmp_path / "two.binaryproto")
    with pytest.raises(CaffeFileError, match=r"train\.prototxt.*not a"):
        read_mean_file(caffe_dir / "mt" / "train.prototxt")
    (tmp_path / "empty.binaryproto").write_bytes(b"")
    with pytest.raises(CaffeFileError, match="empty"):
        read_mean_file(tmp_path / "empty.binaryproto")


# --- Prototxt: nets and solvers --------------------------------------------------------------------


def test_mt_train_prototxt(caffe_dir: Path, expected: dict, strict_warnings: None) -> None:
    net = read_net(caffe_dir / "mt" / "train.prototxt")
    assert net.name == "mt_public"
    layers = {layer.name: layer for layer in net.layer}
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("data", "Data"),
        ("label", "Data"),
        ("slice_label", "Slice"),
        ("conv1", "Convolution"),
        ("relu1", "ReLU"),
        ("pool1", "Pooling"),
        ("fc1", "InnerProduct"),
        ("relu_fc1", "ReLU"),
        ("fc_cls", "InnerProduct"),
        ("fc_attr", "InnerProduct"),
        ("fc_reg", "InnerProduct"),
        ("loss_cls", "SoftmaxWithLoss"),
        ("loss_attr", "SigmoidCrossEntropyLoss"),
        ("loss_reg", "EuclideanLoss"),
    ]

    transform = layers["data"].transform_param
    assert transform.scale == expected["transform"]["scale"]
    assert list(transform.mean_value) == expected["transform"]["mean_value_bgr"]
    assert not transform.mirror and transform.crop_size == 0
    assert not layers["label"].HasField("transform_param")
    for name, source in (("data", "img_lmdb"), ("label", "label_lmdb")):
        data = layers[name].data_param
        assert (data.source, data.batch_size) == (source, expected["batch_size"])
        assert data.backend == caffe_pb2.DataParameter.LMDB

    sliced = layers["slice_label"]
    assert sliced.slice_param.axis == 1
    assert list(sliced.slice_param.slice_point) == [1, 4]
    assert list(sliced.top) == ["label_cls", "label_attr", "label_reg"]

    weights = {name: list(layers[name].loss_weight) for name in expected["loss_weights"]}
    assert weights == {name: [w] for name, w in expected["loss_weights"].items()}
    assert layers["loss_cls"].loss_param.ignore_label == -1
    assert not layers["loss_attr"].HasField("loss_param")
    assert layers["loss_cls"].loss_param.normalization == caffe_pb2.LossParameter.VALID  # the default

    conv = layers["conv1"].convolution_param
    assert (conv.num_output, list(conv.kernel_size), list(conv.pad)) == (8, [3], [1])
    assert conv.weight_filler.type == "gaussian" and conv.weight_filler.std == pytest.approx(0.1)
    assert conv.bias_filler.type == "constant" and conv.bias_term
    pool = layers["pool1"].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (caffe_pb2.PoolingParameter.MAX, 2, 2)
    assert pool.round_mode == caffe_pb2.PoolingParameter.CEIL
    assert [layers[n].inner_product_param.num_output for n in ("fc1", "fc_cls", "fc_attr", "fc_reg")] == [
        16,
        3,
        3,
        1,
    ]
    assert layers["fc1"].inner_product_param.weight_filler.type == "xavier"


def test_mt_solver_prototxt(caffe_dir: Path, expected: dict, strict_warnings: None) -> None:
    solver = read_solver(caffe_dir / "mt" / "solver.prototxt")
    want = expected["solver"]
    assert solver.net == "train.prototxt"
    assert (solver.type, solver.lr_policy) == (want["type"], want["lr_policy"])
    for name in ("base_lr", "gamma", "momentum", "weight_decay"):
        assert getattr(solver, name) == pytest.approx(want[name], rel=1e-7), name  # stored as float32
    for name in ("stepsize", "max_iter", "display", "random_seed"):
        assert getattr(solver, name) == want[name], name
    assert solver.solver_mode == caffe_pb2.SolverParameter.CPU
    # Caffe's defaults for what the file leaves out.
    assert (solver.iter_size, solver.average_loss, solver.snapshot) == (1, 1, 0)
    assert solver.regularization_type == "L2" and solver.clip_gradients == -1
    assert caffe_pb2.SolverParameter().solver_mode == caffe_pb2.SolverParameter.GPU


def test_h5_prototxt_and_solver(caffe_dir: Path, strict_warnings: None) -> None:
    net = read_net(caffe_dir / "h5" / "train_h5.prototxt")
    assert net.name == "mt_public_h5"
    data = net.layer[0]
    assert (data.name, data.type, list(data.top)) == ("data", "HDF5Data", ["data", "label"])
    assert (data.hdf5_data_param.source, data.hdf5_data_param.batch_size) == ("list.txt", 4)
    assert not data.hdf5_data_param.shuffle and not data.HasField("transform_param")
    sliced = next(layer for layer in net.layer if layer.type == "Slice")
    assert list(sliced.slice_param.slice_point) == [1, 4]
    assert {layer.name: list(layer.loss_weight) for layer in net.layer if layer.loss_weight} == {
        "loss_cls": [1.0],
        "loss_attr": [0.5],
        "loss_reg": [2.0],
    }
    assert read_solver(caffe_dir / "h5" / "solver_h5.prototxt").net == "train_h5.prototxt"


def test_unknown_fields_warn_by_name_and_the_rest_parses(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(
        'name: "n"\n'
        "layer {\n"
        '  name: "py"\n'
        '  type: "Python"\n'
        '  python_param { module: "m" layer: "L" param_str: "a" "b" }\n'
        '  top: "out"\n'
        "  convolution_param { num_output: 2 fancy_option: [1, 2] }\n"
        "  detection_output_param { num_classes: 21 nms_param { top_k: 1 } }\n"
        "}\n"
    )
    with pytest.warns(UnknownFieldWarning) as caught:
        net = read_net(path)
    message = str(caught[0].message)
    assert str(path) in message
    assert "ignored 2 field(s)" in message
    assert "caffe.ConvolutionParameter.fancy_option (line 7)" in message
    assert "caffe.LayerParameter.detection_output_param (line 8)" in message  # an SSD fork field
    assert "num_classes" not in message  # fields inside an unknown field are not reported on their own
    assert "python_param" not in message  # Caffe's own fields are known
    assert caught[0].filename == __file__  # the warning points at the caller
    assert net.name == "n" and list(net.layer[0].top) == ["out"]
    assert net.layer[0].convolution_param.num_output == 2
    assert (net.layer[0].python_param.module, net.layer[0].python_param.param_str) == ("m", "ab")


def test_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train.prototxt"\nbase_lr: 0.01\nmax_iter: ten\n')
    with pytest.raises(CaffeFileError) as info:
        read_solver(path)
    error = info.value
    assert isinstance(error, DatasetFormatError)
    assert (error.file, error.line, error.column) == (str(path), 3, 11)
    assert str(error).startswith(f"{path}:3:11: ")


def test_wrong_value_type_is_an_error_not_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "a" unknown_thing: 1 data_param { backend: ROCKSDB } }\n')
    with pytest.raises(CaffeFileError, match=r"net\.prototxt:1:\d+: .*ROCKSDB"):
        read_net(path)


# --- caffemodel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["init", "final"])
def test_caffemodel_blob_shapes(caffe_dir: Path, expected: dict, name: str, strict_warnings: None) -> None:
    path = caffe_dir / "mt" / f"{name}.caffemodel"
    net = read_caffemodel(path, upgrade=False)
    assert net.SerializeToString() == path.read_bytes()  # nothing lost or reordered by the schema
    assert "fc1_relu_fc1_0_split" in [layer.name for layer in net.layer]  # Caffe's inserted Split
    weights = caffemodel_weights(net)
    shapes = {layer: [list(blob.shape) for blob in blobs] for layer, blobs in weights.items()}
    assert shapes == expected["param_shapes"]
    assert all(blob.dtype == np.float32 for blobs in weights.values() for blob in blobs)
    assert all(blob.HasField("shape") for layer in net.layer for blob in layer.blobs)


def test_final_minus_init_matches_expected(caffe_dir: Path, expected: dict) -> None:
    init = caffemodel_weights(read_caffemodel(caffe_dir / "mt" / "init.caffemodel"))
    final = caffemodel_weights(read_caffemodel(caffe_dir / "mt" / "final.caffemodel"))
    for layer, want in expected["final_minus_init_max_abs"].items():
        got = [float(np.abs(f - i).max()) for f, i in zip(final[layer], init[layer], strict=True)]
        assert got == want, layer


def test_write_caffemodel_round_trip(tmp_path: Path, caffe_dir: Path) -> None:
    net = read_caffemodel(caffe_dir / "mt" / "init.caffemodel")
    write_caffemodel(tmp_path / "copy.caffemodel", net)
    assert (tmp_path / "copy.caffemodel").read_bytes() == (caffe_dir / "mt" / "init.caffemodel").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["copy.caffemodel"]  # no temporary file left


def test_caffemodel_unknown_field_warns_with_layer(tmp_path: Path) -> None:
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="p", type="PReLU")
    layer.blobs.append(array_to_blob(np.ones(3, np.float32)))
    # Field 204 (SSD's detection_output_param) is not Caffe's; add it as raw bytes: tag 204<<3|2 and
    # an empty message. So is NetParameter field 9.
    raw_layer = layer.SerializeToString() + b"\xe2\x0c\x00"
    wire = b"\x0a\x01n" + b"\xa2\x06" + bytes([len(raw_layer)]) + raw_layer + b"\x4a\x00"
    (tmp_path / "x.caffemodel").write_bytes(wire)
    with pytest.warns(UnknownFieldWarning) as caught:
        parsed = read_caffemodel(tmp_path / "x.caffemodel")
    message = str(caught[0].message)
    assert "caffe.LayerParameter field 204 (layer 'p')" in message
    assert "caffe.NetParameter field 9" in message
    assert caffemodel_weights(parsed)["p"][0].tolist() == [1.0, 1.0, 1.0]
    assert parsed.SerializeToString() == wire  # unknown fields survive a rewrite


def test_caffemodel_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.caffemodel").write_bytes(b"\x0a\xff")
    with pytest.raises(CaffeFileError, match=r"bad\.caffemodel: not a binary NetParameter"):
        read_caffemodel(tmp_path / "bad.caffemodel")
    net = caffe_pb2.NetParameter()
    for _ in range(2):
        net.layer.add(name="fc").blobs.append(array_to_blob(np.zeros(1, np.float32)))
    with pytest.raises(DatasetFormatError, match="two layers named 'fc'"):
        caffemodel_weights(net)


# --- The full schema -------------------------------------------------------------------------------

# LayerParameter's *_param fields with Caffe's numbers (BVLC master caffe.proto).
CAFFE_LAYER_PARAM_NUMBERS = {
    "transform_param": 100, "loss_param": 101, "accuracy_param": 102, "argmax_param": 103,
    "batch_norm_param": 139, "bias_param": 141, "clip_param": 148, "concat_param": 104,
    "contrastive_loss_param": 105, "convolution_param": 106, "crop_param": 144, "data_param": 107,
    "dropout_param": 108, "dummy_data_param": 109, "eltwise_param": 110, "elu_param": 140,
    "embed_param": 137, "exp_param": 111, "flatten_param": 135, "hdf5_data_param": 112,
    "hdf5_output_param": 113, "hinge_loss_param": 114, "image_data_param": 115,
    "infogain_loss_param": 116, "inner_product_param": 117, "input_param": 143, "log_param": 134,
    "lrn_param": 118, "memory_data_param": 119, "mvn_param": 120, "parameter_param": 145,
    "pooling_param": 121, "power_param": 122, "prelu_param": 131, "python_param": 130,
    "recurrent_param": 146, "reduction_param": 136, "relu_param": 123, "reshape_param": 133,
    "scale_param": 142, "sigmoid_param": 124, "softmax_param": 125, "spp_param": 132,
    "slice_param": 126, "swish_param": 147, "tanh_param": 127, "threshold_param": 128,
    "tile_param": 138, "window_data_param": 129,
}  # fmt: skip


def test_layer_parameter_has_every_caffe_param_field_with_its_number() -> None:
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    got = {name: f.number for name, f in fields.items() if name.endswith("_param")}
    assert got == CAFFE_LAYER_PARAM_NUMBERS


def test_new_parameter_messages_have_caffes_defaults() -> None:
    layer = caffe_pb2.LayerParameter()
    assert (layer.prelu_param.channel_shared, layer.prelu_param.HasField("filler")) == (False, False)
    assert (layer.power_param.power, layer.power_param.scale, layer.power_param.shift) == (1, 1, 0)
    assert (layer.exp_param.base, layer.log_param.base) == (-1, -1)
    assert (layer.elu_param.alpha, layer.swish_param.beta, layer.threshold_param.threshold) == (1, 1, 0)
    assert layer.mvn_param.normalize_variance and not layer.mvn_param.across_channels
    assert layer.mvn_param.eps == pytest.approx(1e-9)
    assert (layer.reduction_param.operation, layer.reduction_param.axis) == (
        caffe_pb2.ReductionParameter.SUM,
        0,
    )
    assert (layer.argmax_param.top_k, layer.argmax_param.HasField("axis")) == (1, False)
    assert (layer.crop_param.axis, layer.tile_param.axis, layer.infogain_loss_param.axis) == (2, 1, 1)
    assert layer.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L1
    assert (layer.contrastive_loss_param.margin, layer.contrastive_loss_param.legacy_version) == (1, False)
    assert layer.embed_param.bias_term and layer.window_data_param.crop_mode == "warp"
    v0 = caffe_pb2.V0LayerParameter()
    assert (v0.biasterm, v0.group, v0.stride, v0.local_size, v0.k) == (True, 1, 1, 5, 1)


def test_v1_and_v0_layers_parse_into_the_legacy_messages() -> None:
    from google.protobuf import text_format

    net = text_format.Parse(
        'layers { name: "c" type: CONVOLUTION blobs_lr: 1 blobs_lr: 2 weight_decay: 0 param: "w"'
        "  convolution_param { num_output: 2 } }\n"
        'layers { layer { name: "p" type: "padding" pad: 2 } }\n',
        caffe_pb2.NetParameter(),
    )
    v1, v0 = net.layers
    assert (v1.type, list(v1.blobs_lr), list(v1.weight_decay), list(v1.param)) == (4, [1, 2], [0], ["w"])
    assert caffe_pb2.V1LayerParameter.LayerType.Name(v1.type) == "CONVOLUTION"
    assert (v0.layer.name, v0.layer.type, v0.layer.pad) == ("p", "padding", 2)
    wire = net.SerializeToString()
    assert wire[:1] == b"\x12"  # NetParameter field 2, as old Caffe wrote V1 caffemodels
    assert caffe_pb2.NetParameter.FromString(wire) == net


def test_clip_param_without_its_required_bounds_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "clip.prototxt"
    path.write_text('layer { name: "c" type: "Clip" clip_param { min: 0 } }\n')
    with pytest.raises(
        CaffeFileError, match=r"clip\.prototxt: missing required field\(s\): layer\[0\]\.clip_param\.max"
    ):
        read_net(path)
    path.write_text('layer { name: "c" type: "Clip" clip_param { min: -1 max: 1 } }\n')
    assert read_net(path).layer[0].clip_param.max == 1
    partial = caffe_pb2.NetParameter()
    partial.layer.add(name="c").clip_param.min = 0
    (tmp_path / "clip.caffemodel").write_bytes(partial.SerializePartialToString())
    with pytest.raises(CaffeFileError, match=r"clip\.caffemodel: missing required"):
        read_caffemodel(tmp_path / "clip.caffemodel")


def _fixture_files(pattern: str) -> list[Path]:
    return sorted(FIXTURES.glob(pattern)) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("path", _fixture_files("*/*.prototxt"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fixture_prototxt_uses_only_caffe_fields(path: Path, strict_warnings: None) -> None:
    text = path.read_text()
    message = read_solver(path, upgrade=False) if "base_lr" in text else read_net(path, upgrade=False)
    assert message.ListFields()


@pytest.mark.parametrize("path", _fixture_files("*/*.caffemodel"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fixture_caffemodel_uses_only_caffe_fields(path: Path, strict_warnings: None) -> None:
    net = read_caffemodel(path, upgrade=False)
    assert net.SerializeToString() == path.read_bytes()  # nothing lost or reordered by the schema
