"""--set overrides shared by the publishing tests (imported by name, like tests/detection/detection_helpers)."""


def detection_overrides(root, out_dir, backbone_weights=None):
    """--set overrides of a few-second `botnet detect train` on a tiny mosaic."""
    sets = [
        f"output.dir={out_dir}", f"data.root={root}",
        "data.mosaic={num_train: 8, num_val: 4, canvas: 96, min_items: 1, max_items: 3, min_item_size: 24, "
        "max_item_size: 48}",
        "model.kwargs={layers: [1, 1, 1, 3], widths: [8, 16, 32, 64], stem_width: 8}",
        "model.canvas=96", "model.fpn_channels=32", "model.anchor_sizes=[16, 32, 64, 128, 256]",
        "model.box_head_dim=64", "model.mask_head_layers=[16]", "model.rpn_pre_nms_top_n_train=100",
        "model.rpn_post_nms_top_n_train=50", "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=50",
        "model.box_batch_size_per_image=32", "train.epochs=1", "data.batch_size=4", "optim.name=adamw",
        "optim.lr=0.002", "train.threads=1", "train.log_every=1", "train.progress=false", "eval.batch_size=4",
        "eval.num_draw=0", "train.plots=false",
    ] + ([f"model.backbone_weights={backbone_weights}"] if backbone_weights else [])
    return [a for s in sets for a in ("--set", s)]
