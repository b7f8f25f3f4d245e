"""Legacy V0/V1 Caffe files upgraded as Caffe upgrades them (shared/fixtures/caffe/v1 for the goldens).

Tolerance of the forward (v1/README.md): rtol 1e-4 and atol 1e-5·max(1, max|golden|) per blob,
accuracy and loaded parameters exact.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtldata.caffe import caffe_pb2
from mtldata.caffe.prototxt import (
    layer_line,
    read_caffemodel,
    read_net,
    read_solver,
    upgrade_caffe_file,
)
from mtldata.caffe.upgrade import V1_TYPE_NAMES, LegacyUpgradeWarning, upgrade_net, upgrade_solver
from mtldata.caffenet.net import CaffeNet, CaffeNetError, load_caffemodel
from mtldata.cli import main
from mtldata.errors import CaffeFileError, DatasetStateError
from mtldata.tasks import load_tasks

V1 = caffe_pb2.V1LayerParameter


@pytest.fixture(scope="module")
def v1(caffe_fixtures: Path) -> Path:
    return caffe_fixtures / "v1"


@pytest.fixture(scope="module")
def expected(v1: Path) -> dict:
    return json.loads((v1 / "expected.json").read_text())


@pytest.fixture(scope="module")
def golden(v1: Path) -> dict[str, np.ndarray]:
    with np.load(v1 / "v1.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def parse_text(path: Path, message):
    return text_format.Parse(path.read_text(), message)


# --- The v1 goldens ------------------------------------------------------------------------------


def test_v1_prototxt_reads_as_the_net_caffe_upgrades_it_to(v1: Path, no_warnings: None) -> None:
    net = read_net(v1 / "v1_net.prototxt")
    assert net == parse_text(v1 / "upgraded_net.prototxt", caffe_pb2.NetParameter())
    assert not net.layers and not net.input and not net.input_dim
    layers = {layer.name: layer for layer in net.layer}
    assert net.layer[0].name == "input" and net.layer[0].type == "Input"
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[2, 3, 11, 11], [2, 1, 1, 1]]
    conv = layers["conv1"]
    assert conv.type == "Convolution"
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    for name in ("fc2", "fc2_twin"):
        params = layers[name].param
        assert [(p.name, p.lr_mult) for p in params] == [("shared_w", 1), ("shared_b", 2)]
        assert not any(p.HasField("decay_mult") for p in params)  # V1 gave no weight_decay
    assert layers["loss"].type == "SoftmaxWithLoss" and layers["loss"].include[0].phase == caffe_pb2.TRAIN


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_v1_net_builds_caffes_layers_in_each_phase(v1: Path, expected: dict, phase: str) -> None:
    net = CaffeNet(v1 / "v1_net.prototxt", phase.lower())
    got = [{"name": layer.name, "type": layer.type} for layer in net.net_param.layer]
    assert got == expected["layers_after_upgrade"][phase]


@pytest.mark.parametrize("model", ["v1_net", "upgraded_net", "resaved_by_caffe"])
def test_every_caffemodel_form_loads_caffes_parameters_exactly(v1: Path, golden: dict, model: str) -> None:
    net = CaffeNet(v1 / "v1_net.prototxt", "test")
    report = load_caffemodel(net, v1 / f"{model}.caffemodel")
    assert report.copied == ["conv1", "conv2", "fc1", "fc2", "fc2_twin"] and not report.not_in_file
    params = net.params_by_layer()
    keys = [k for k in golden if k.startswith("param/")]
    assert len(keys) == 10
    for key in keys:
        _, layer, i = key.split("/")
        np.testing.assert_array_equal(params[layer][int(i)].detach().numpy(), golden[key], err_msg=key)
    assert params["fc2_twin"][0] is params["fc2"][0]  # shared by ParamSpec name, as in Caffe


def test_v1_forward_reproduces_caffe(v1: Path, golden: dict) -> None:
    net = CaffeNet(v1 / "v1_net.prototxt", "test")
    load_caffemodel(net, v1 / "v1_net.caffemodel")
    net.eval()
    with torch.no_grad():
        blobs = net(
            {"data": torch.from_numpy(golden["in/data"]), "label": torch.from_numpy(golden["in/label"])}
        )
    keys = [k for k in golden if k.startswith("blob/")]
    assert len(keys) == 14
    for key in keys:
        want, got = golden[key], blobs[key[len("blob/") :]].numpy()
        assert got.shape == want.shape, key
        if key == "blob/accuracy":
            assert got == want
        else:
            atol = 1e-5 * max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=key)


def test_v1_caffemodel_reads_upgraded_with_its_legacy_blob_dims(v1: Path, no_warnings: None) -> None:
    net = read_caffemodel(v1 / "v1_net.caffemodel")
    assert net == caffe_pb2.NetParameter.FromString((v1 / "upgraded_net.caffemodel").read_bytes())
    fc1 = next(layer for layer in net.layer if layer.name == "fc1")
    assert [(b.num, b.channels, b.height, b.width) for b in fc1.blobs] == [(1, 1, 5, 24), (1, 1, 1, 5)]
    raw = read_caffemodel(v1 / "v1_net.caffemodel", upgrade=False)
    assert len(raw.layers) == 14 and not raw.layer and list(raw.input) == ["data", "label"]


def test_old_solver_type_enum_becomes_the_type_string(v1: Path, no_warnings: None) -> None:
    solver = read_solver(v1 / "v1_solver.prototxt")
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert solver == parse_text(v1 / "upgraded_solver.prototxt", caffe_pb2.SolverParameter())


@pytest.mark.parametrize(
    ("name", "golden_name", "kind", "steps"),
    [
        ("v1_net.prototxt", "upgraded_net.prototxt", "net prototxt", "V1 layers, input fields"),
        ("v1_net.caffemodel", "upgraded_net.caffemodel", "caffemodel", "V1 layers, input fields"),
        ("v1_solver.prototxt", "upgraded_solver.prototxt", "solver prototxt", "solver_type"),
    ],
)
def test_caffe_upgrade_command_writes_what_caffes_tools_write(
    v1: Path, tmp_path: Path, name: str, golden_name: str, kind: str, steps: str
) -> None:
    out = tmp_path / f"new_{name}"
    result = CliRunner().invoke(main, ["caffe", "upgrade", str(v1 / name), str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out} ({kind}; upgraded {steps})\n"
    if kind == "caffemodel":
        want = caffe_pb2.NetParameter.FromString((v1 / golden_name).read_bytes())
        assert caffe_pb2.NetParameter.FromString(out.read_bytes()) == want
    else:
        message = caffe_pb2.SolverParameter() if "solver" in kind else caffe_pb2.NetParameter()
        assert parse_text(out, type(message)()) == parse_text(v1 / golden_name, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left


def test_caffe_upgrade_refuses_to_overwrite_without_the_flag(v1: Path, tmp_path: Path) -> None:
    out = tmp_path / "net.prototxt"
    out.write_text("mine\n")
    result = CliRunner().invoke(main, ["caffe", "upgrade", str(v1 / "v1_net.prototxt"), str(out)])
    assert result.exit_code == 1
    assert result.output == f"mtldata: error: {out} already exists; pass --overwrite to replace it\n"
    assert out.read_text() == "mine\n"
    again = CliRunner().invoke(
        main, ["caffe", "upgrade", "--overwrite", str(v1 / "v1_net.prototxt"), str(out)]
    )
    assert again.exit_code == 0 and read_net(out) == read_net(v1 / "upgraded_net.prototxt")
    current = CliRunner().invoke(
        main, ["caffe", "upgrade", str(v1 / "upgraded_net.prototxt"), str(tmp_path / "x")]
    )
    assert current.exit_code == 0 and "already in the current format" in current.output


def test_tasks_from_a_v1_prototxt(tmp_path: Path) -> None:
    path = tmp_path / "v1mt.prototxt"
    path.write_text(
        'layers { name: "d" type: DATA top: "data" top: "label" data_param { source: "x" batch_size: 2 backend: LMDB } }\n'
        'layers { name: "s" type: SLICE bottom: "label" top: "l_cls" top: "l_reg" slice_param { slice_point: 1 } }\n'
        'layers { name: "fc_cls" type: INNER_PRODUCT bottom: "data" top: "fc_cls" inner_product_param { num_output: 3 } }\n'
        'layers { name: "fc_reg" type: INNER_PRODUCT bottom: "data" top: "fc_reg" inner_product_param { num_output: 1 } }\n'
        'layers { name: "loss_cls" type: SOFTMAX_LOSS bottom: "fc_cls" bottom: "l_cls" top: "loss_cls" }\n'
        'layers { name: "loss_reg" type: EUCLIDEAN_LOSS bottom: "fc_reg" bottom: "l_reg" top: "loss_reg" loss_weight: 2 }\n'
    )
    result = CliRunner().invoke(main, ["tasks", "--from-prototxt", str(path), "-k", "2"])
    assert result.exit_code == 0, result.output
    tasks = load_tasks(result.output).tasks
    assert [(t.name, t.kind, t.loss_weight) for t in tasks] == [
        ("cls", "softmax", 1.0),
        ("reg", "euclidean", 2.0),
    ]


# --- Upgrades of hand-written legacy nets ----------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


V0_NET = """
name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1 biasterm: false
          weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 2 } bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
"""

V0_UPGRADED = """
name: "v0"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 bias_term: false pad: 2 kernel_size: 3 stride: 2 group: 1
                            weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }
"""


def test_v0_net_upgrades_with_its_padding_folded_into_the_conv(tmp_path: Path, no_warnings: None) -> None:
    net = read_net(write(tmp_path, V0_NET))
    assert net == text_format.Parse(V0_UPGRADED, caffe_pb2.NetParameter())
    out = CaffeNet(net, "test")
    assert out.layer("conv1").blobs()[0].shape == (4, 3, 3, 3)
    assert tuple(out({"data": torch.zeros(1, 3, 8, 8)})["fc"].shape) == (1, 2)


def test_v0_data_layer_settings_move_to_data_and_transform_params(tmp_path: Path, no_warnings: None) -> None:
    path = write(
        tmp_path,
        'layers { layer { name: "d" type: "data" source: "db" batchsize: 8 rand_skip: 3 scale: 0.5 '
        'meanfile: "m.binaryproto" cropsize: 4 mirror: true } top: "data" top: "label" }\n',
    )
    (layer,) = read_net(path).layer
    assert layer.type == "Data"
    assert (layer.data_param.source, layer.data_param.batch_size, layer.data_param.rand_skip) == ("db", 8, 3)
    t = layer.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.5, "m.binaryproto", 4, True)
    assert not layer.data_param.HasField("scale")


def test_v0_setting_of_another_layer_type_is_dropped_with_a_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'input: "x" layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "x" }\n',
    )
    with pytest.warns(
        LegacyUpgradeWarning, match=r"net\.prototxt: V0 layer 'r' of type 'relu': dropped num_output"
    ):
        (layer,) = read_net(path).layer
    assert layer.type == "ReLU" and [f.name for f, _ in layer.ListFields()] == [
        "name",
        "type",
        "bottom",
        "top",
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('layers { layer { name: "a" type: "warp" } }', "unknown V0 layer type 'warp'"),
        (
            'layers { layer { name: "a" type: "relu" } bottom: "nowhere" top: "a" }',
            "unknown bottom blob 'nowhere'",
        ),
        (
            'input: "x" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }'
            'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }',
            "a padding layer feeds a 'relu' layer",
        ),
        (
            'layers { layer { name: "a" type: "relu" } } layers { name: "b" type: RELU }',
            "a V1 layer in a net of V0",
        ),
        (
            'layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }',
            "both 'layer' (current) and 'layers'",
        ),
        (
            'input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4',
            "need 8 input_dim values",
        ),
    ],
)
def test_what_caffe_refuses_to_upgrade_is_an_error_naming_the_file(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(CaffeFileError, match=re.escape(reason)) as info:
        read_net(path)
    assert info.value.file == str(path)


def test_v1_data_layer_transform_fields_move_to_transform_param(tmp_path: Path, no_warnings: None) -> None:
    path = write(
        tmp_path,
        'layers { name: "d" type: DATA top: "data" data_param { source: "db" batch_size: 2 scale: 0.25 mirror: true } }\n'
        'layers { name: "i" type: IMAGE_DATA top: "img" image_data_param { source: "list.txt" } }\n',
    )
    data, images = read_net(path).layer
    assert (data.transform_param.scale, data.transform_param.mirror) == (0.25, True)
    assert not data.data_param.HasField("scale") and data.data_param.source == "db"
    # Caffe's upgrade touches transform_param of every data layer once one needs it.
    assert images.HasField("transform_param") and not images.transform_param.ListFields()


def test_v1_share_modes_loss_weights_and_params_carry_over() -> None:
    net = text_format.Parse(
        'layers { name: "e" type: EUCLIDEAN_LOSS bottom: "a" bottom: "b" top: "l" loss_weight: 0.5 }\n'
        'layers { name: "c" type: CONVOLUTION param: "w" blob_share_mode: PERMISSIVE blobs_lr: 0 '
        "convolution_param { num_output: 1 kernel_size: 1 } include { phase: TEST } }\n"
        'layers { name: "t" type: THRESHOLD threshold_param { threshold: 0.5 } exclude { stage: "x" } }\n'
        'layers { name: "n" type: NONE }\n',
        caffe_pb2.NetParameter(),
    )
    assert upgrade_net(net, "n.prototxt") == ["V1 layers"]
    loss, conv, thr, none = net.layer
    assert (loss.type, list(loss.loss_weight)) == ("EuclideanLoss", [0.5])
    (spec,) = conv.param
    assert (spec.name, spec.share_mode, spec.lr_mult) == ("w", caffe_pb2.ParamSpec.PERMISSIVE, 0)
    assert conv.convolution_param.num_output == 1 and conv.include[0].phase == caffe_pb2.TEST
    assert (thr.type, thr.threshold_param.threshold, list(thr.exclude[0].stage)) == ("Threshold", 0.5, ["x"])
    assert none.HasField("type") and none.type == ""


def test_three_param_batch_norm_gets_lr_and_decay_zero() -> None:
    net = text_format.Parse(
        'layer { type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }'
        'layer { type: "BatchNorm" param { lr_mult: 1 } }',
        caffe_pb2.NetParameter(),
    )
    assert upgrade_net(net, "bn.prototxt") == ["BatchNorm params"]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3
    assert net.layer[1].param[0].lr_mult == 1


def test_solver_upgrade_errors_and_embedded_nets(tmp_path: Path) -> None:
    path = write(tmp_path, 'solver_type: ADAM type: "Adam"\n', "solver.prototxt")
    with pytest.raises(CaffeFileError, match=r"solver\.prototxt: solver gives both"):
        read_solver(path)
    solver = text_format.Parse(
        'solver_type: RMSPROP net_param { layers { name: "r" type: RELU } }', caffe_pb2.SolverParameter()
    )
    assert upgrade_solver(solver, "s") == ["solver_type", "net_param: V1 layers"]
    assert solver.type == "RMSProp" and solver.net_param.layer[0].type == "ReLU"


def test_inputs_without_shapes_are_dropped_as_in_old_caffemodels() -> None:
    net = caffe_pb2.NetParameter(input=["data"])
    net.layer.add(name="fc", type="InnerProduct")
    assert upgrade_net(net, "m.caffemodel") == ["input fields"]
    assert [layer.name for layer in net.layer] == ["fc"] and not net.input


# --- Errors that name the file and line --------------------------------------------------------------


def test_unknown_layer_type_names_the_layer_and_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name: "n"\nlayer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
        'layer {\n  name: "odd"\n  bottom: "x"\n  type: "MyForkLayer"\n  top: "y"\n}\n',
    )
    with pytest.raises(CaffeNetError, match=rf"^{path}:6: layer 'odd': unknown layer type 'MyForkLayer'"):
        CaffeNet(path, "test")
    # The same net read first and given as a message, with the file named as its source.
    with pytest.raises(CaffeNetError, match=rf"^{path}:6: layer 'odd'"):
        CaffeNet(read_net(path), "test", source=path)


def test_layer_line_finds_v1_v0_and_solver_embedded_layers(tmp_path: Path) -> None:
    v0 = write(tmp_path, V0_NET, "v0.prototxt")
    assert layer_line(v0, "fc", "InnerProduct") == 13  # V0_NET starts with an empty line
    v1 = write(
        tmp_path,
        'layers {\n name: "a"\n type: RELU\n}\nlayers {\n name: "a"\n type: SIGMOID\n}\n',
        "v1.prototxt",
    )
    assert layer_line(v1, "a", "Sigmoid") == 7 and layer_line(v1, "a") == 3
    assert layer_line(v1, "missing") is None and layer_line(tmp_path / "nope", "a") is None
    solver = write(tmp_path, 'net_param {\n  layer {\n    name: "z"\n  }\n}\nbase_lr: 1\n', "s.prototxt")
    assert layer_line(solver, "z") == 2


def test_a_net_without_layers_for_the_phase_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'name: "n"\nlayer { name: "r" type: "ReLU" bottom: "x" top: "x" include { phase: TEST } }\n'
    )
    with pytest.raises(CaffeNetError, match=rf"^{path}: net 'n' has no layer in the TRAIN phase"):
        CaffeNet(path, "train")


def test_train_solver_with_an_empty_or_unreadable_net_exits_1(tmp_path: Path) -> None:
    write(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" include { phase: TEST } }\n')
    solver = write(
        tmp_path, 'net: "net.prototxt"\nbase_lr: 0.1\nmax_iter: 2\nlr_policy: "fixed"\n', "solver.prototxt"
    )
    result = CliRunner().invoke(main, ["train", "--solver", str(solver), "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().endswith(
        "has no layer in the TRAIN phase (1 layer(s) in all, none kept by their include/exclude rules)"
    )
    assert result.output.count("\n") == 1
    (tmp_path / "net.prototxt").write_bytes(b"\x0a\x05\xff\xfe")
    result = CliRunner().invoke(main, ["train", "--solver", str(solver), "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith(
        f"mtldata: error: {tmp_path / 'net.prototxt'}: not UTF-8"
    )
    solver.write_text('net: "gone.prototxt"\nbase_lr: 0.1\n')
    result = CliRunner().invoke(main, ["train", "--solver", str(solver), "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and "gone.prototxt" in result.output and result.output.count("\n") == 1


def test_upgrade_file_api_refuses_an_existing_target(tmp_path: Path) -> None:
    src = write(tmp_path, 'layers { name: "r" type: RELU }\n', "old.prototxt")
    (tmp_path / "new.prototxt").write_text("x")
    with pytest.raises(DatasetStateError, match="already exists"):
        upgrade_caffe_file(src, tmp_path / "new.prototxt")
    done = upgrade_caffe_file(src, tmp_path / "new.prototxt", overwrite=True)
    assert (done.kind, done.steps) == ("net prototxt", ["V1 layers"])
    assert read_net(tmp_path / "new.prototxt", upgrade=False).layer[0].type == "ReLU"


# --- Property: arbitrary V1/V0 messages upgrade or fail with the file named ----------------------------

_names = st.sampled_from(["a", "b", "c", "data", "x"])
_v0 = st.builds(
    caffe_pb2.V0LayerParameter,
    name=_names,
    type=st.sampled_from(["conv", "pool", "relu", "padding", "data", "innerproduct", "bogus", "lrn"]),
    num_output=st.integers(0, 4),
    pad=st.integers(0, 3),
    kernelsize=st.integers(1, 3),
    scale=st.floats(0, 2, width=32),
    source=st.just("db"),
)
_v1 = st.builds(
    V1,
    name=_names,
    type=st.sampled_from(list(V1.LayerType.values())),
    bottom=st.lists(_names, max_size=2),
    top=st.lists(_names, max_size=2),
    blobs_lr=st.lists(st.floats(0, 2, width=32), max_size=3),
    weight_decay=st.lists(st.floats(0, 2, width=32), max_size=3),
    param=st.lists(_names, max_size=2),
    blob_share_mode=st.lists(st.sampled_from([0, 1]), max_size=2),
    loss_weight=st.lists(st.floats(0, 2, width=32), max_size=2),
)


@st.composite
def legacy_nets(draw) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="n", input=draw(st.lists(_names, max_size=2)))
    net.input_dim.extend(draw(st.lists(st.integers(1, 4), max_size=8)))
    for layer in draw(st.lists(_v1, min_size=1, max_size=5)):
        added = net.layers.add()
        added.CopyFrom(layer)
        if draw(st.booleans()):
            added.layer.CopyFrom(draw(_v0))
        if added.type == V1.DATA and draw(st.booleans()):
            added.data_param.scale = 0.5
    if draw(st.booleans()):
        net.layer.add(name="new", type="ReLU")
    return net


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=legacy_nets())
def test_any_legacy_caffemodel_upgrades_or_fails_naming_the_file(tmp_path: Path, net) -> None:
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(net.SerializeToString())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LegacyUpgradeWarning)
            upgraded = read_caffemodel(path)
    except CaffeFileError as e:
        assert e.file == str(path) and str(e).startswith(f"{path}: ")
        return
    assert not upgraded.layers and not upgraded.input  # input_dim alone stays, as in Caffe
    assert all(layer.type in set(V1_TYPE_NAMES.values()) | {"Input", "ReLU"} for layer in upgraded.layer)
    assert caffe_pb2.NetParameter.FromString(upgraded.SerializeToString()) == upgraded
    again = caffe_pb2.NetParameter()
    again.CopyFrom(upgraded)
    assert upgrade_net(again, path) == [] and again == upgraded  # the upgrade is done once for all


def test_a_data_layer_the_runner_cannot_feed_names_its_line(v1: Path, tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{v1 / "v1_net.prototxt"}"\nbase_lr: 0.1\nmax_iter: 1\nlr_policy: "fixed"\n')
    result = CliRunner().invoke(main, ["train", "--solver", str(solver), "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    # The Input layer made from the V1 net's input fields has no line of its own: the file is named.
    assert result.output == (
        f"mtldata: error: {v1 / 'v1_net.prototxt'}: layer 'input': the runner feeds Data, HDF5Data and "
        "ImageData layers, not Input\n"
    )


def test_a_v1_message_built_in_code_is_upgraded_by_caffenet_and_load_caffemodel() -> None:
    net = text_format.Parse(
        'input: "x" input_dim: 1 input_dim: 2 input_dim: 1 input_dim: 1\n'
        'layers { name: "fc" type: INNER_PRODUCT bottom: "x" top: "y" inner_product_param { num_output: 3 } }\n',
        caffe_pb2.NetParameter(),
    )
    model = caffe_pb2.NetParameter()
    model.CopyFrom(net)
    weight = model.layers[0].blobs.add(num=1, channels=1, height=3, width=2)
    weight.data.extend([1, 2, 3, 4, 5, 6])
    model.layers[0].blobs.add(num=1, channels=1, height=1, width=3).data.extend([0, 0, 1])
    built = CaffeNet(net, "test")
    assert [layer.type for layer in built.net_param.layer] == ["Input", "InnerProduct"]
    assert load_caffemodel(built, model).copied == ["fc"]
    out = built({"x": torch.ones(1, 2, 1, 1)})["y"]
    assert out.tolist() == [[3.0, 7.0, 12.0]]
    assert len(net.layers) == 1  # the caller's message is left as it was


def test_train_solver_runs_a_v1_net_with_an_old_solver_as_caffe_would(caffe_fixtures, tmp_path, monkeypatch):
    """The mt golden net, rewritten in the V1 format (and its solver with solver_type), trains as the original."""
    mt = caffe_fixtures / "mt"
    text = (mt / "train.prototxt").read_text()
    v1_names = {new: old for old, new in V1_TYPE_NAMES.items()}
    text = re.sub(r'^  type: "(\w+)"', lambda m: f"  type: {v1_names[m.group(1)]}", text, flags=re.M)
    text = text.replace("layer {", "layers {")
    # The V1 data layer's own scale field moves to transform_param on upgrade.
    text = text.replace("    scale: 0.00390625\n", "").replace(
        '    source: "img_lmdb"\n', '    source: "img_lmdb"\n    scale: 0.00390625\n'
    )
    (tmp_path / "train_v1.prototxt").write_text(text)
    want = read_net(mt / "train.prototxt")
    want.layer[1].transform_param.SetInParent()  # Caffe's upgrade touches every V1 data layer's
    assert read_net(tmp_path / "train_v1.prototxt") == want
    solver = (mt / "solver.prototxt").read_text().replace('type: "SGD"', "solver_type: SGD")
    solver = solver.replace('net: "train.prototxt"', f'net: "{tmp_path / "train_v1.prototxt"}"')
    (tmp_path / "solver_v1.prototxt").write_text(solver)
    monkeypatch.chdir(mt)  # the Data layers' sources resolve against the working directory, as in Caffe
    args = ["train", "--solver", str(tmp_path / "solver_v1.prototxt"), "--init", str(mt / "init.caffemodel")]
    result = CliRunner().invoke(main, [*args, "--workdir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        "Iteration 0, loss = 2.47048" in lines and "Iteration 10, loss = 2.04531" in lines
    )  # Caffe's figures
