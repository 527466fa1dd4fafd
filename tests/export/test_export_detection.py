"""A detection run exports (torch.export and ONNX) with a dynamic image size, and the file finds the
eager detector's boxes, labels, scores and masks at two sizes of either orientation."""
import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from botnet.detection import build_detector
from botnet.engine import checkpoint as ckpt
from botnet.export import detection as det
from botnet.export import read_export_marker
from helpers import assert_one_line_error, run, tree

sys.path.insert(0, str(Path(__file__).parents[1] / "detection"))
from detection_helpers import TINY_BACKBONE, TINY_HEADS  # noqa: E402

# portrait and landscape, neither the 96 px canvas; 191 is a long side that float32 resizes to 95 px
# (96 / 191 * 191 = 95.99999) and Python's float64, as eager does, to 96
SIZES = [(191, 97), (56, 120)]


def _detector(kind="maskrcnn", canvas=96) -> nn.Module:
    """The tests' tiny detector with weights that make its scores spread out (untrained, the BN
    gains of 0 and a near-zero classifier give near-equal scores, whose order is noise); its top 20
    detections, which it keeps, are at least 5e-5 apart in score on the images below."""
    torch.manual_seed(0)
    m = build_detector(kind, "botnet50", num_classes=5, canvas=canvas, min_size=96, max_size=160,
                       backbone_kwargs=TINY_BACKBONE, box_detections_per_img=20, **TINY_HEADS)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
        m.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5, generator=g)
    return m.eval()


def _save_run(model, run_dir: Path) -> Path:
    kind = model.detector_config["kind"]
    ckpt.save_checkpoint(run_dir / "last.safetensors", model, arch=f"detector:{kind}_botnet50_fpn",
                         model_kwargs=model.detector_config, task="detection", save_state=False)
    return run_dir


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(2)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    return _save_run(_detector(), tmp_path_factory.mktemp("det") / "run")


def _image(path: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    Image.fromarray((torch.rand(70, 50, 3, generator=g) * 255).to(torch.uint8).numpy()).save(path)
    return path


def _rebuilt(run_dir: Path) -> nn.Module:
    """The run's detector built by hand from its stored options, weights straight from the file:
    independent of the export command's own rebuild."""
    from safetensors.torch import load_file

    kw = dict(ckpt.read_metadata(run_dir / "last.safetensors")["model_kwargs"])
    m = build_detector(kw.pop("kind"), kw.pop("backbone"), **{k: v for k, v in kw.items() if k != "backbone_weights"})
    m.load_state_dict(load_file(run_dir / "last.safetensors"))
    return m.eval()


def test_test_detector_finds_many_well_separated_detections(images):
    # Guards the comparisons below: they compare detections one by one, in order, so the scores of
    # the 20 kept and of the first one left out must not be near-ties.
    assert int(96 / 191 * 191) == 96 and int(torch.tensor(96.0) / 191 * 191) == 95
    model = _detector()
    model.roi_heads.detections_per_img = 21
    with torch.no_grad():
        for x in images:
            out = model([x])[0]
            s = out["scores"]
            assert len(s) == 21 and len(out["labels"].unique()) >= 2
            assert (s[:-1] - s[1:]).min() > 5e-5 and out["masks"].amax() > 0.5


@pytest.fixture(scope="module")
def exported(det_run, tmp_path_factory):
    """`botnet export --checkpoint RUN` once per format: (file, what it printed); the ONNX export takes
    ~20 s on 2 cores."""
    from botnet.cli import main

    cache = {}

    def get(fmt):
        if fmt not in cache:
            if fmt == "onnx":
                pytest.importorskip("onnxscript")
                pytest.importorskip("onnxruntime")
            d = tmp_path_factory.mktemp(fmt)
            out = d / ("m.onnx" if fmt == "onnx" else "m.pt2")
            # the .pt2 one verifies on an image (70 x 50): its lines are checked below
            verify = ["--no-verify"] if fmt == "onnx" else ["--verify-image", str(_image(d / "img.png"))]
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(["export", "--checkpoint", str(det_run), "--format", fmt, "--out", str(out), *verify]) == 0
            cache[fmt] = out, printed.getvalue()
        return cache[fmt]

    return get


def _runner(fmt, path):
    """The file run directly (onnxruntime, torch.export.load): {output name: tensor} for an image."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return lambda x: dict(zip(names, map(torch.from_numpy, sess.run(None, {"image": x.numpy()}))))
    program = torch.export.load(str(path)).module()
    return lambda x: dict(zip(["boxes", "labels", "scores", "masks"], program(x)))


@pytest.mark.parametrize("fmt, tol", [("export", 1e-5), ("onnx", 1e-3)])
def test_exported_run_matches_eager_at_two_sizes(fmt, tol, det_run, exported, images):
    path = exported(fmt)[0]
    assert read_export_marker(path)["format"] == fmt
    model, run_file = _rebuilt(det_run), _runner(fmt, path)
    for x in images:
        with torch.no_grad():
            ref, out = model([x])[0], run_file(x)
        assert sorted(out) == ["boxes", "labels", "masks", "scores"]
        assert out["masks"].shape == ref["masks"].shape == (20, 1, *x.shape[-2:])
        assert torch.equal(out["labels"], ref["labels"])
        assert (out["boxes"] - ref["boxes"]).abs().max() <= tol * 10  # pixels
        assert (out["scores"] - ref["scores"]).abs().max() <= tol
        assert (out["masks"] - ref["masks"]).abs().max() <= tol


def test_onnx_file_declares_symbolic_height_and_width(exported):
    onnx = pytest.importorskip("onnx")
    g = onnx.load(str(exported("onnx")[0])).graph
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert g.input[0].name == "image" and dims[0] == 3 and all(isinstance(d, str) for d in dims[1:]), dims
    assert [o.name for o in g.output] == ["boxes", "labels", "scores", "masks"]


def test_faster_rcnn_program_matches_eager_at_two_sizes(tmp_path, images):
    model = _detector("fasterrcnn")
    path = det.export_detector(model, "export", tmp_path / "f.pt2")
    ep = torch.export.load(str(path))
    shape = ep.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape
    assert all(isinstance(s, torch.SymInt) for s in shape[1:]), shape
    checks = det.verify_detector(model, "export", path, images)
    assert [(c.eager, c.exported, c.paired, c.near_cut, c.unpaired) for c in checks] == [(20, 20, 20, 0, 0)] * 2
    assert max(max(c.box_err, c.score_err) for c in checks) <= 1e-5


def test_cli_verify_checks_the_image_and_its_transposed_crop(exported):
    out, printed = exported("export")
    lines = printed.strip().splitlines()
    assert lines[0].startswith(f"wrote {out} (export, detector") and "boxes, labels, scores, masks" in lines[0]
    assert [ln.split(":")[0] for ln in lines[1:]] == ["verify 70x50", "verify 37x70"]
    assert all("20 eager / 20 exported detections, 20 paired; max" in ln for ln in lines[1:]), lines


def test_default_verify_images_are_random_at_two_orientations():
    model = _detector()
    assert det.verify_sizes(model) == [(96, 72), (60, 120)] and det.verify_sizes(model, 200) == [(200, 150), (125, 250)]
    a, b = det.verify_images(model), det.verify_images(model)
    assert [tuple(x.shape) for x in a] == [(3, 96, 72), (3, 60, 120)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and 0 <= float(a[0].min()) and float(a[0].max()) <= 1


# ---------------------------------------------------------------- the swapped torchvision parts
def test_pasted_masks_equal_torchvision_paste():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    g = torch.Generator().manual_seed(0)
    for h, w in [(80, 64), (37, 120)]:
        masks = torch.rand(40, 1, 28, 28, generator=g)
        xy = torch.rand(40, 2, generator=g) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * torch.tensor([w, h]) * 0.7], 1)
        boxes = torch.minimum(boxes, torch.tensor([w, h, w, h]))
        # at the corners, one pixel wide, and a point
        boxes[:3] = torch.tensor([[0.0, 0.0, 0.5, 0.5], [w - 1.0, h - 1.0, w, h], [3.0, 4.0, 3.0, 4.0]])
        ref = paste_masks_in_image(masks, boxes, (h, w))
        ours = det._paste_masks_in_image(masks, boxes, (h, w))
        assert ours.shape == ref.shape == (40, 1, h, w)
        assert (ours - ref).abs().max() <= 1e-5 and torch.equal(ours > 0, ref > 0)


def test_batched_nms_keeps_torchvisions_boxes():
    from torchvision.ops import batched_nms

    g = torch.Generator().manual_seed(0)
    for n in (0, 30, 1500):  # 1500 boxes: torchvision's per-class loop
        xy = torch.rand(n, 2, generator=g) * 200
        boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], 1)
        scores, idxs = torch.rand(n, generator=g), torch.randint(0, 4, (n,), generator=g)
        assert torch.equal(det._batched_nms(boxes, scores, idxs, 0.5), batched_nms(boxes, scores, idxs, 0.5))


def test_exportable_restores_torchvision_even_after_an_error():
    import torchvision.models.detection.transform as T
    import torchvision.ops.boxes as B

    before = (B.batched_nms, T.paste_masks_in_image, T._resize_image_and_masks)
    with pytest.raises(RuntimeError), det.exportable():
        assert B.batched_nms is det._batched_nms
        raise RuntimeError
    assert (B.batched_nms, T.paste_masks_in_image, T._resize_image_and_masks) == before


def test_pairing_allows_swapped_near_ties_and_a_cut_off_near_tie_only():
    ref = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
           "labels": torch.tensor([1, 2, 1]), "scores": torch.tensor([0.9, 0.8999, 0.2])}
    swapped = {"boxes": ref["boxes"][[1, 0, 2]], "labels": ref["labels"][[1, 0, 2]],
               "scores": torch.tensor([0.9, 0.8999, 0.2])}  # the near-tie in the other order
    c = det.compare_detections(ref, swapped)
    assert (c.paired, c.near_cut, c.unpaired, c.box_err) == (3, 0, 0, 0.0) and c.ok()
    assert c.score_err == pytest.approx(1e-4, rel=1e-2)
    # the lowest one missing: a near-tie at the cut-off
    cut = {k: v[:2] for k, v in ref.items()}
    assert (lambda c: (c.paired, c.near_cut, c.unpaired, c.ok()))(det.compare_detections(ref, cut)) == (2, 1, 0, True)
    moved = {**ref, "boxes": ref["boxes"] + torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])}
    c = det.compare_detections(ref, moved)
    assert (c.paired, c.unpaired) == (2, 2) and not c.ok()  # the moved box, on both sides
    relabelled = {**ref, "labels": torch.tensor([1, 3, 1])}
    assert det.compare_detections(ref, relabelled).unpaired == 2


def test_masks_pasted_a_pixel_apart_are_counted_not_compared():
    # torchvision pastes a 28 px mask into its box grown by 30/28 about its centre, cut to whole
    # pixels: y2 = 27.996 grows to 28.9959 (last row 28), y2 = 28.004 to 29.0041 (last row 29)
    ref = {"boxes": torch.tensor([[10.0, 0.0, 20.0, 27.996], [30.0, 30.0, 40.0, 40.0]]),
           "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8]), "masks": torch.zeros(2, 1, 48, 50)}
    out = {**ref, "boxes": ref["boxes"] + torch.tensor([[0.0, 0, 0, 0.008], [0, 0, 0, 0]]),
           "masks": ref["masks"].clone()}
    out["masks"][0, 0, 29, 10:20] = 0.4  # the extra row
    out["masks"][1, 0, 35, 35] = 2e-4
    c = det.compare_detections(ref, out)
    assert (c.paired, c.masks_skipped, c.unpaired) == (2, 1, 0) and c.mask_err == pytest.approx(2e-4) and c.ok()
    out["boxes"][0, 3] = 27.999  # the same pixels: compared, and the difference shows
    c = det.compare_detections(ref, out)
    assert c.masks_skipped == 0 and c.mask_err == pytest.approx(0.4) and not c.ok()


# ---------------------------------------------------------------- what the command refuses
@pytest.fixture()
def variable_size_run(tmp_path):
    return _save_run(_detector(canvas=None), tmp_path / "var")


@pytest.mark.parametrize("args, says", [
    (["--format", "torchscript"], "--format torchscript: a detector exports to onnx or export"),
    (["--format", "export", "--batch", "2"], "--batch does not apply to a detector"),
    (["--format", "export", "--img-size", "20000"], "--img-size 20000 is too large for a detector export"),
    (["--format", "export", "--verify-image", "missing.png"], "--verify-image missing.png: no such file"),
    (["--format", "export", "--verify-image", "tiny.png"], "--verify-image tiny.png is 2x2 pixels; use an image "
                                                          "with sides from 3 to 16384"),
    (["--format", "export", "--verify-image", "tiny.png", "--no-verify"], "--verify-image and --no-verify contradict"),
    (["--format", "onnx", "--min-size", "61"], "--min-size 61 is above the sizes the detector is traced and "
                                               "checked at (the smallest side is 60 px)"),
])
def test_refused_options_are_one_line(det_run, tmp_path, capsys, monkeypatch, args, says):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (2, 2)).save(tmp_path / "tiny.png")
    before = tree(det_run.parent)
    rc, _, err = run(capsys, ["export", "--checkpoint", det_run, "--out", tmp_path / "m.x", *args])
    assert_one_line_error(rc, err, says)
    assert not (tmp_path / "m.x").exists() and tree(det_run.parent) == before


def test_variable_size_detector_is_refused_in_one_line(variable_size_run, tmp_path, capsys):
    rc, _, err = run(capsys, ["export", "--checkpoint", variable_size_run, "--format", "onnx",
                              "--out", tmp_path / "m.onnx"])
    assert_one_line_error(rc, err, f"--checkpoint {variable_size_run}", "model.canvas: null", "fixed canvas")
    assert not (tmp_path / "m.onnx").exists()
