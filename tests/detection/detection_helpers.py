"""Shared tiny configurations for the detection tests."""
# A BoT50-layout backbone (3 BoT blocks in c5, stride 32) reduced in depth and width so tests stay fast.
TINY_BACKBONE = {"layers": (1, 1, 1, 3), "widths": (8, 16, 32, 64), "stem_width": 8}
TINY_HEADS = dict(
    fpn_channels=32, anchor_sizes=(16, 32, 64, 128, 256), box_head_dim=64, mask_head_layers=(16,),
    rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50, box_batch_size_per_image=32,
)


def tiny_config_overrides(root, out_dir, *, epochs=2, num_train=16, num_val=8):
    """--set overrides for a few-second `botnet detect train` run on a tiny mosaic."""
    return [
        f"output.dir={out_dir}", f"data.root={root}",
        f"data.mosaic={{num_train: {num_train}, num_val: {num_val}, canvas: 96, min_items: 1, max_items: 3, "
        "min_item_size: 24, max_item_size: 48}",
        "model.kwargs={layers: [1, 1, 1, 3], widths: [8, 16, 32, 64], stem_width: 8}",
        "model.canvas=96", "model.fpn_channels=32", "model.anchor_sizes=[16, 32, 64, 128, 256]",
        "model.box_head_dim=64", "model.mask_head_layers=[16]", "model.rpn_pre_nms_top_n_train=100",
        "model.rpn_post_nms_top_n_train=50", "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=50",
        "model.box_batch_size_per_image=32",
        f"train.epochs={epochs}", "data.batch_size=4", "optim.name=adamw", "optim.lr=0.002", "optim.weight_decay=0.05",
        "sched.warmup_epochs=0.5", "train.threads=1", "train.log_every=1", "train.progress=false",
        "eval.batch_size=4", "eval.num_draw=1",
    ]


