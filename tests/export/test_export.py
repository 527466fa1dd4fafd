"""Exported models (ONNX via onnxruntime, TorchScript, torch.export) match eager at three sizes, one of
them with a non-square attention grid."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import botnet
import botnet.cli
from botnet.export import export_model, verify, verify_inputs

# the trace size, another batch/height/width, and one whose attention grid is not square (7 x 9)
SIZES = [(2, 1, 28, 28), (3, 1, 40, 36), (1, 1, 28, 36)]


def _model() -> nn.Module:
    """botnet_mini with weights that make every part matter (the default init zeroes the
    residual branch of each block through its last BN, which would hide the attention)."""
    torch.manual_seed(0)
    m = botnet.create_model("botnet_mini", num_classes=10, in_chans=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
        for _, attn in m.attention_layers():
            attn.qkv.weight.normal_(0, 0.3, generator=g)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(2)
    return [torch.randn(*s, generator=g) for s in SIZES]


def test_test_model_depends_on_attention_and_positions(model, inputs):
    # Guards the comparison below: an export that dropped the position term must be caught.
    name, attn = model.attention_layers()[-1]
    with torch.no_grad():
        ref = model(inputs[1])
        saved = attn.rel_h.clone()
        attn.rel_h.add_(torch.randn(attn.rel_h.shape) * 0.5)  # (a constant shift cancels in the softmax)
        changed = model(inputs[1])
        attn.rel_h.copy_(saved)
    assert (ref - changed).abs().max() > 1e-2, name


def _attention_grids(model, x) -> list:
    grids = []
    hooks = [a.register_forward_pre_hook(lambda _m, inp: grids.append(tuple(inp[0].shape[2:])))
             for _, a in model.attention_layers()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return grids


def test_sizes_include_a_non_square_attention_grid(model, inputs):
    grids = _attention_grids(model, inputs[2])
    assert grids and all(h != w for h, w in grids), grids


@pytest.mark.parametrize("name, kw", [("botnet_mini", dict(num_classes=10, in_chans=1)), ("botnet50", {})])
def test_verify_inputs_give_every_attention_layer_a_non_square_grid(name, kw):
    with torch.device("meta"):
        m = botnet.create_model(name, **kw).eval()
    xs = verify_inputs(m, batch=2)
    assert [tuple(x.shape[:2]) for x in xs] == [(2, m.pretrained_cfg["input_size"][0]), (3, xs[0].shape[1]), (1, xs[0].shape[1])]
    assert xs[0].shape[2] == xs[0].shape[3] == m.pretrained_cfg["img_size"][0]
    grids = _attention_grids(m, xs[2].to("meta"))
    assert len(grids) == len(m.attention_layers()) and all(h != w for h, w in grids), grids


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """Export each format once per session (the ONNX export takes ~15 s on 2 cores)."""
    cache: dict = {}

    def get(fmt):
        if fmt not in cache:
            if fmt == "onnx":
                pytest.importorskip("onnxscript")
                pytest.importorskip("onnxruntime")
            d = tmp_path_factory.mktemp(fmt)
            cache[fmt] = export_model(model, fmt, d / f"m.{fmt}", img_size=28, batch=2)
        return cache[fmt]

    return get


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "export"])
def test_export_matches_eager_at_three_sizes(fmt, model, inputs, exported):
    path = exported(fmt)
    assert path.is_file() and path.stat().st_size > 0
    errs = verify(model, fmt, path, inputs)
    assert max(errs) <= 1e-4, errs


def test_onnx_graph_declares_dynamic_batch_height_width(exported):
    onnx = pytest.importorskip("onnx")
    g = onnx.load(str(exported("onnx"))).graph
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 1 and isinstance(dims[2], str) and isinstance(dims[3], str), dims
    assert len({dims[0], dims[2], dims[3]}) == 3, dims


def test_onnx_attention_is_one_scan_per_layer(model, exported):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(exported("onnx")))
    ops = [(n.domain, n.op_type) for n in proto.graph.node]
    assert ops.count(("", "Scan")) == len(model.attention_layers()) == 2
    assert ("", "Softmax") not in ops and all(d in ("", "ai.onnx") for d, _ in ops)


@pytest.mark.parametrize("argv, culprit", [
    (["--format", "onnx", "--opset", "17"], "--opset 17"),
    (["--format", "onnx", "--opset", "24"], "--opset 24"),
    (["--format", "torchscript", "--opset", "20"], "--opset"),
    (["--format", "export", "--onnx-attention", "sdpa"], "--onnx-attention"),
])
def test_cli_export_refuses_onnx_options_that_do_not_apply(argv, culprit, tmp_path, capsys):
    out = tmp_path / "m.file"
    rc = botnet.cli.main(["export", "botnet_mini", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists() and len(err) == 1 and culprit in err[0], err


def test_export_program_has_symbolic_dims(exported):
    ep = torch.export.load(str(exported("export")))
    shape = ep.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape
    assert all(isinstance(s, torch.SymInt) for s in (shape[0], shape[2], shape[3])), shape


def test_cli_export_with_checkpoint(model, inputs, tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "m.ts"
    with warnings.catch_warnings(record=True) as caught:  # torch's deprecation notes: the help says it once
        warnings.simplefilter("always")
        rc = botnet.cli.main(["export", "botnet_mini", "--format", "torchscript", "--out", str(out),
                              "--checkpoint", str(ckpt), "--img-size", "28"])
    assert rc == 0 and out.is_file()
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
    # the checkpoint's classes and channels were picked up and its weights exported
    errs = verify(model, "torchscript", out, inputs)
    assert max(errs) <= 1e-4, errs


def test_cli_export_rejects_mismatched_checkpoint(tmp_path):
    ckpt = tmp_path / "w.pt"
    sd = botnet.create_model("botnet_mini", num_classes=10, in_chans=1).state_dict()
    sd.pop("fc.bias")
    torch.save(sd, ckpt)
    rc = botnet.cli.main(["export", "botnet_mini", "--format", "torchscript", "--out", str(tmp_path / "m.ts"),
                          "--checkpoint", str(ckpt)])
    assert rc == 2 and not (tmp_path / "m.ts").exists()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A short run of the demo recipe: its model has non-default options (strides [2, 2, 2, 1])."""
    from botnet.data import fashion_mnist as fm

    if fm._complete(fm.SYSTEM_DIR) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    run = tmp_path_factory.mktemp("demo") / "run"
    rc = botnet.cli.main(["train", "--config", "fashion-mnist", "--limit-train", "1024", "--limit-val", "32",
                          "--max-steps", "30", "--batch-size", "32", "--warmup-epochs", "0", "--lr", "0.01",
                          "--no-progress", "--no-plots", "--threads", "1", "--output", str(run)])
    assert rc == 0
    return run


def _trained_model(run):
    """Built by hand from what the recipe says, weights straight from the file: independent of the
    export command's own rebuild."""
    from safetensors.torch import load_file

    m = botnet.create_model("botnet_mini", num_classes=10, in_chans=1, img_size=28, strides=[2, 2, 2, 1])
    m.load_state_dict(load_file(run / "last.safetensors"))
    return m.eval()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "export"])
def test_export_of_a_trained_run_is_the_trained_model(demo_run, tmp_path, fmt):
    out = tmp_path / f"m.{fmt}"
    rc = botnet.cli.main(["export", "--checkpoint", str(demo_run / "last.safetensors"), "--format", fmt,
                          "--out", str(out), "--no-verify"])
    assert rc == 0 and out.is_file()
    trained = _trained_model(demo_run)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(4, 1, 28, 28, generator=g), torch.randn(2, 1, 36, 32, generator=g)]
    errs = verify(trained, fmt, out, xs)
    assert max(errs) <= 1e-4, errs
    # guard: the default botnet_mini (other strides) really is a different function
    default = botnet.create_model("botnet_mini", num_classes=10, in_chans=1, img_size=28)
    default.load_state_dict(trained.state_dict())  # same keys and shapes: only the strides differ
    assert (default.eval()(xs[0]) - trained(xs[0])).abs().max() > 1e-2
