import pytest
import torch
from torch import nn

from botnet.errors import ConfigError
import botnet
from botnet.detection import (
    CanvasRCNNTransform,
    botnet_fpn_backbone,
    build_detector,
    fasterrcnn_botnet50_fpn,
    maskrcnn_botnet50_fpn,
)

from detection_helpers import TINY_BACKBONE, TINY_HEADS


def _batch(with_masks):
    imgs = [torch.rand(3, 90, 130), torch.rand(3, 120, 70)]  # different, non-square sizes
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 20.0, 120.0, 80.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[5.0, 30.0, 60.0, 110.0]]), "labels": torch.tensor([2])},
    ]
    if with_masks:
        for img, t in zip(imgs, targets):
            m = torch.zeros(len(t["boxes"]), *img.shape[-2:], dtype=torch.uint8)
            for k, (x0, y0, x1, y1) in enumerate(t["boxes"].int().tolist()):
                m[k, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = 1
            t["masks"] = m
    return imgs, targets


@pytest.mark.parametrize("kind", ["maskrcnn", "fasterrcnn"])
@pytest.mark.parametrize("canvas", [None, 128])
def test_forward_backward_and_eval_shapes(kind, canvas):
    model = build_detector(kind, "botnet50", num_classes=4, canvas=canvas, min_size=96, max_size=160,
                           backbone_kwargs=TINY_BACKBONE, **TINY_HEADS)
    imgs, targets = _batch(kind == "maskrcnn")
    for blk in model.backbone.body.layer4:  # the last BN of each block starts at 0, which blocks the
        torch.nn.init.ones_(blk.bn3.weight)  # gradient into the branch; open it to see grads reach MHSA
    model.train()
    losses = model(imgs, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    if kind == "maskrcnn":
        expected.add("loss_mask")
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # gradients reach the BoT attention (qkv and relative tables) of c5
    attn = [m for m in model.backbone.body.layer4.modules() if isinstance(m, botnet.RelPosMHSA)]
    assert len(attn) == 3
    for m in attn:
        assert m.qkv.weight.grad is not None and m.qkv.weight.grad.abs().sum() > 0
        assert m.rel_h.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(imgs)
    assert len(out) == 2
    for o, img in zip(out, imgs):
        n = len(o["boxes"])
        assert o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        if kind == "maskrcnn":
            assert o["masks"].shape == (n, 1, *img.shape[-2:])  # pasted at the original image size
        else:
            assert "masks" not in o
        if n:
            assert (o["boxes"][:, 2] <= img.shape[-1] + 1e-3).all() and (o["boxes"][:, 3] <= img.shape[-2] + 1e-3).all()


def test_canvas_transform_pads_to_fixed_square():
    t = CanvasRCNNTransform(128, [0.0] * 3, [1.0] * 3)
    t.eval()
    images, _ = t([torch.rand(3, 40, 100), torch.rand(3, 64, 32)])
    assert images.tensors.shape == (2, 3, 128, 128)
    # long side resized to the canvas, aspect kept
    assert images.image_sizes == [(51, 128), (128, 64)]


def test_named_builders_and_img_size_sets_attention_tables():
    m = maskrcnn_botnet50_fpn(num_classes=5, canvas=256)
    assert isinstance(m, torchvision_maskrcnn())
    sizes = [mod.feat_size for mod in m.backbone.body.layer4.modules() if isinstance(mod, botnet.RelPosMHSA)]
    assert sizes == [(16, 16), (8, 8), (8, 8)]  # c5 attends at canvas/16 then canvas/32 (paper: 64 then 32 at 1024)
    assert m.roi_heads.box_predictor.cls_score.out_features == 5
    f = fasterrcnn_botnet50_fpn(num_classes=3, img_size=1024, canvas=None)
    sizes = [mod.feat_size for mod in f.backbone.body.layer4.modules() if isinstance(mod, botnet.RelPosMHSA)]
    assert sizes == [(64, 64), (32, 32), (32, 32)]
    assert not hasattr(f.roi_heads, "mask_head") or f.roi_heads.mask_head is None


def torchvision_maskrcnn():
    from torchvision.models.detection import MaskRCNN

    return MaskRCNN


def test_resnet_backbone_for_comparison():
    m = build_detector("fasterrcnn", "resnet50", num_classes=3, canvas=128,
                       backbone_kwargs={"layers": (1, 1, 1, 1), "widths": (8, 16, 32, 64), "stem_width": 8})
    assert not any(isinstance(x, botnet.RelPosMHSA) for x in m.modules())


def test_frozen_bn_sync_bn_and_trainable_layers():
    from torchvision.ops import FrozenBatchNorm2d

    m = build_detector("fasterrcnn", "botnet50", num_classes=3, canvas=96, norm="frozen", trainable_layers=2,
                       backbone_kwargs=TINY_BACKBONE, **{k: v for k, v in TINY_HEADS.items() if k != "mask_head_layers"})
    body = m.backbone.body
    assert not any(isinstance(x, nn.BatchNorm2d) for x in body.modules())
    assert any(isinstance(x, FrozenBatchNorm2d) for x in body.modules())
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    s = build_detector("fasterrcnn", "botnet50", num_classes=3, canvas=96, norm="sync",
                       backbone_kwargs=TINY_BACKBONE, **{k: v for k, v in TINY_HEADS.items() if k != "mask_head_layers"})
    assert any(isinstance(x, nn.SyncBatchNorm) for x in s.modules())
    assert all(p.requires_grad for p in s.backbone.body.parameters())


def test_frozen_bn_conversion_keeps_statistics():
    from botnet.detection import convert_frozen_batchnorm

    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_()
    bn.eval()
    x = torch.randn(2, 4, 5, 5)
    frozen = convert_frozen_batchnorm(nn.Sequential(bn))
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)


def test_fpn_body_matches_model_feature_maps():
    bb = botnet_fpn_backbone("botnet50", img_size=64, **TINY_BACKBONE)
    model = botnet.create_model("botnet50", num_classes=0, img_size=64, **TINY_BACKBONE)
    model.load_state_dict({k: v for k, v in bb.body.state_dict().items()}, strict=False)
    model.eval(), bb.eval()
    x = torch.randn(1, 3, 64, 96)
    ref = model.forward_feature_maps(x)
    got = bb.body(x)
    for i, name in enumerate(["layer1", "layer2", "layer3", "layer4"]):
        torch.testing.assert_close(got[str(i)], ref[name])
    assert bb.strides == [4, 8, 16, 32]


@pytest.mark.parametrize("recipe", ["detection-coco", "detection-fashion-mosaic"])
def test_recipes_load_and_build(recipe):
    from botnet.detection import DETECTION_DEFAULTS, validate_detection_config
    from botnet.detection.config import detector_kwargs
    from botnet.engine.config import load_config

    tiny = "model.kwargs={layers: [1, 1, 1, 3], widths: [8, 16, 32, 64], stem_width: 8}"
    cfg = validate_detection_config(load_config(recipe, [tiny], defaults=DETECTION_DEFAULTS))
    kw = detector_kwargs(cfg, num_classes=11)
    kw["backbone_weights"] = None
    model = build_detector(kw.pop("kind"), kw.pop("backbone"), **kw)
    assert model.detector_config["canvas"] == cfg["model"]["canvas"]
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(recipe, ["train.no_such_key=1"], defaults=DETECTION_DEFAULTS)


def test_image_without_annotations_trains():
    model = build_detector("maskrcnn", "botnet50", num_classes=4, canvas=96, backbone_kwargs=TINY_BACKBONE, **TINY_HEADS)
    imgs, targets = _batch(True)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "masks": torch.zeros(0, *imgs[1].shape[-2:], dtype=torch.uint8)}
    losses = model(imgs, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def _wide_after(model, first):
    """Detections on a wide image by a copy of ``model`` that saw ``first`` before it."""
    import copy

    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if first is not None:
            model([first])
        return model([torch.rand(3, 48, 96, generator=g)])[0]


def test_roi_pool_scales_are_the_fpn_strides_whatever_image_comes_first():
    # torchvision infers them from the first batch (feature height / tallest image height, rounded
    # to a power of 2): a wide first image on the square canvas gave 1/2 instead of 1/4 for good
    torch.manual_seed(0)
    model = build_detector("maskrcnn", "botnet50", num_classes=4, canvas=96, backbone_kwargs=TINY_BACKBONE,
                           **TINY_HEADS).eval()
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
        assert (pool.map_levels.k_min, pool.map_levels.k_max) == (2, 5)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data.fill_(1.0)  # open the residual branches so the heads see real features
    model.roi_heads.score_thresh = 0.0
    square = torch.rand(3, 96, 96)
    alone, after_square = _wide_after(model, None), _wide_after(model, square)
    assert len(alone["boxes"]) > 0
    assert torch.equal(alone["boxes"], after_square["boxes"]) and torch.equal(alone["masks"], after_square["masks"])
    # guard: torchvision's own inference (scales left unset) does depend on the first image
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        pool.scales = pool.map_levels = None
    alone, after_square = _wide_after(model, None), _wide_after(model, square)
    a, b = alone["scores"], after_square["scores"]
    assert a.shape != b.shape or not torch.allclose(a, b)
