"""ResNet and BoTNet: one bottleneck network whose chosen blocks swap the 3x3 conv for MHSA.

Model family (paper, arXiv 2101.11605; details in the paper notes):
- ``resnet50/101/152/200``: plain ResNet baselines, state dict identical to torchvision's.
- ``botnet50/101/152/200``: the detection backbones, the three c5 blocks made BoT blocks.
- ``botnet_s1_59/77/110/128``: the ImageNet family T3-T7: stride 1 in c5, SE, SiLU.
- ``botnet_mini``: a small BoT model for 28-64 px images (the CPU demo).

Parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``,
``downsample.0/1``) and timm's SE (``se.fc1``, ``se.fc2``), so ResNet checkpoints transfer.

Every entry point is a timm model too (see ``_registry``): built by ``timm.models.build_model_with_cfg``
with the pretrained config of ``default_cfgs``, so timm's arguments (``features_only``, ``out_indices``,
``feature_cls``, ``global_pool``, ``pretrained_cfg_overlay``...) work, and the model keeps timm's
model contract (``forward_features``/``forward_head``, ``reset_classifier``, ``feature_info``,
``forward_intermediates``, ``set_grad_checkpointing``, ``group_matcher``). Feature levels are
numbered as in timm's ResNets: 0 the stem (``act1``, stride 2), 1-4 ``layer1``..``layer4``.

:class:`BoTBlock` is the paper's block on its own; ``botnet.models.botnet_from_resnet`` makes one
out of every c5 block of a torchvision or timm ResNet.
"""
import contextlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import torch
from timm.layers import DropPath, SEModule, create_classifier
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, resolve_pretrained_cfg
from torch import nn

from botnet.layers import RelPosMHSA
from botnet.models._registry import TIMM_NAMES, register_model, resolve_name

__all__ = ["ResNet", "Bottleneck", "BoTBlock", "ResNetCfg", "MODEL_CFGS", "default_cfgs"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# The resize mode of every model's pretrained_cfg (and of a run that names none), as timm's ResNets use.
INTERPOLATION = "bicubic"

def _act(name: str) -> type[nn.Module]:
    try:
        return {"relu": nn.ReLU, "silu": nn.SiLU}[name]
    except KeyError:
        raise ValueError(f"act must be 'relu' or 'silu', got {name!r}") from None


def _down(size: int, stride: int) -> int:
    """Output length of a stride-s conv/pool with 'same'-style padding (ceil division)."""
    return -(-size // stride)


class Bottleneck(nn.Module):
    """ResNet bottleneck; with ``attn=True`` the 3x3 conv is global MHSA (a BoT block).

    conv1x1 -> BN -> act -> [conv3x3(stride) | MHSA -> AvgPool2d(2) if strided] -> BN -> act
    -> conv1x1 -> BN(gamma=0) -> [SE] -> [drop path] -> + shortcut -> act

    In a strided BoT block the attention runs at the block's input resolution and a 2x2 average
    pool follows it (official code). The pool uses ``ceil_mode=True`` (without counting padding) so
    an odd H or W gives ceil(H/2), the same as the strided 1x1 shortcut; the last row/column is
    then averaged on its own.
    """

    expansion = 4
    __constants__ = ["attn"]  # TorchScript compiles only the branch this block has (conv2 or mhsa)

    def __init__(
        self,
        in_chs: int,
        width: int,
        stride: int = 1,
        *,
        attn: bool = False,
        feat_size: tuple[int, int] = (14, 14),
        heads: int = 4,
        pos: str = "relative",
        attn_impl: str = "auto",
        act_layer: type[nn.Module] = nn.ReLU,
        se_rd: int = 0,
        shortcut_act: bool = False,
        drop_path: float = 0.0,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        out_chs = width * self.expansion
        if attn and stride not in (1, 2):
            raise ValueError(f"a BoT block's stride must be 1 or 2 (a 2x2 pool follows the attention), got {stride}")
        self.attn = attn
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = act_layer(inplace=True)
        if attn:
            self.mhsa = RelPosMHSA(width, heads, feat_size, pos=pos, impl=attn_impl)
            self.pool = (
                nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride == 2 else nn.Identity()
            )
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = act_layer(inplace=True)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.se = SEModule(out_chs, rd_channels=se_rd) if se_rd else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act3 = act_layer(inplace=True)
        if stride != 1 or in_chs != out_chs:
            layers: list[nn.Module] = [nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)]
            if shortcut_act:  # the official snippet's BN -> ReLU on the projection shortcut
                layers.append(act_layer(inplace=True))
            self.downsample = nn.Sequential(*layers)
        else:
            self.downsample = nn.Identity()
        self.zero_init_last = zero_init_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))  # (B, width, H, W)
        if self.attn:
            y = self.pool(self.mhsa(y))  # attention at (H, W), then pool to (H/s, W/s)
        else:
            y = self.conv2(y)
        y = self.act2(self.bn2(y))
        y = self.bn3(self.conv3(y))  # (B, 4*width, H/s, W/s)
        y = self.drop_path(self.se(y))
        y += shortcut  # in place, as torchvision does: no extra activation-sized buffer
        return self.act3(y)


class BoTBlock(Bottleneck):
    """The paper's BoT block: a ResNet bottleneck whose 3x3 convolution is global multi-head
    self-attention with 2D relative positions (:class:`botnet.layers.RelPosMHSA`).

    conv1x1(in_chs -> width) -> BN -> act -> MHSA(width, heads) -> [AvgPool2d(2) if stride 2] -> BN -> act
    -> conv1x1(width -> 4 * width) -> BN(gamma=0) -> [SE] -> [drop path] -> + shortcut -> act

    The shortcut is the identity, or a strided 1x1 conv + BN when the stride or the channels change
    (with ``shortcut_act=True`` also the official snippet's ReLU). A strided block attends at its
    input resolution and then pools, as the official code does. State-dict keys are torchvision's
    bottleneck ones with ``conv2`` replaced by ``mhsa.qkv`` and ``mhsa.rel_h``/``mhsa.rel_w``.

    Args:
        in_chs: input channels.
        width: the attention's channels; the block outputs ``4 * width`` (BoT50's c5: 512 -> 2048).
        stride: 1, or 2 for a downsampling block.
        feat_size: (H, W) or an int: the input size the position tables are built for (the first
            c5 block of BoT50 at 1024 px: 64). Any other input size works: the tables are resized.
        heads: attention heads (the paper: 4); ``width`` must be divisible by it.
        pos: "relative" (the paper), "absolute" or "none" (its ablations).
        attn_impl: RelPosMHSA's implementation ("auto", "sdpa", "flex", "explicit"; same function).
        act_layer, se_rd, shortcut_act, drop_path: as :class:`Bottleneck`.
        zero_init_last: start the last BN's gamma at 0 (the block starts as its shortcut).

    ``BoTBlock.from_bottleneck`` turns a torchvision or timm bottleneck into one, keeping its weights.
    """

    def __init__(
        self,
        in_chs: int,
        width: int,
        stride: int = 1,
        *,
        feat_size: int | tuple[int, int],
        heads: int = 4,
        pos: str = "relative",
        attn_impl: str = "auto",
        act_layer: type[nn.Module] = nn.ReLU,
        se_rd: int = 0,
        shortcut_act: bool = False,
        drop_path: float = 0.0,
        zero_init_last: bool = True,
    ) -> None:
        hw = (feat_size, feat_size) if isinstance(feat_size, int) else (int(feat_size[0]), int(feat_size[1]))
        super().__init__(in_chs, width, stride, attn=True, feat_size=hw, heads=heads, pos=pos, attn_impl=attn_impl,
                         act_layer=act_layer, se_rd=se_rd, shortcut_act=shortcut_act, drop_path=drop_path,
                         zero_init_last=zero_init_last)
        if zero_init_last:  # deterministic (no random numbers drawn): a ResNet's own init is unchanged
            nn.init.zeros_(self.bn3.weight)

    @classmethod
    def from_bottleneck(
        cls, block: nn.Module, *, feat_size: int | tuple[int, int], heads: int = 4, pos: str = "relative",
        attn_impl: str = "auto",
    ) -> "BoTBlock":
        """The BoT block of a torchvision or timm ``Bottleneck``: its 3x3 ``conv2`` becomes MHSA
        (then a 2x2 average pool where ``conv2`` had stride 2); every other module of ``block``
        (``conv1``, ``bn1``, ``bn2``, ``conv3``, ``bn3``, ``downsample``, timm's ``se`` and
        ``drop_path``, the activations) moves over as it is, weights and all. ``feat_size`` is the
        block's input size (H, W), where its attention runs."""
        conv2 = _bottleneck_conv2(block)
        with torch.device(conv2.weight.device):  # the new attention lives where the block does
            bot = cls(block.conv1.in_channels, conv2.in_channels, conv2.stride[0], feat_size=feat_size, heads=heads,
                      pos=pos, attn_impl=attn_impl, zero_init_last=False)
        bot.mhsa.to(dtype=conv2.weight.dtype)
        acts = [getattr(block, n, None) for n in ("act1", "act2", "act3")]
        if not all(isinstance(a, nn.Module) for a in acts):
            acts = [block.relu] * 3  # torchvision's blocks apply one ReLU module three times
        bot.act1, bot.act2, bot.act3 = acts
        for name in ("conv1", "bn1", "bn2", "conv3", "bn3"):
            setattr(bot, name, getattr(block, name))
        for name in ("downsample", "se", "drop_path"):  # None in torchvision/timm: nothing to apply
            module = getattr(block, name, None)
            setattr(bot, name, nn.Identity() if module is None else module)
        return bot


def _bottleneck_conv2(block: nn.Module) -> nn.Conv2d:
    """``block``'s 3x3 conv, after checking that ``block`` is a bottleneck a BoT block can replace."""
    kind = type(block).__name__
    names = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
    missing = [n for n in names if not isinstance(getattr(block, n, None), nn.Module)]
    if missing:
        raise TypeError(f"{kind} is not a bottleneck block (it has no {', '.join(missing)}); BoT blocks replace the "
                        "3x3 conv of ResNet-50 and deeper (resnet18/34 have basic blocks)")
    for name, what in (("aa", "anti-aliasing"), ("drop_block", "DropBlock")):
        if not isinstance(getattr(block, name, None), (nn.Identity, type(None))):
            raise ValueError(f"{kind} has {what} ({name}) after its 3x3 conv, which a BoT block has no place for; "
                             "build the ResNet without it")
    conv2 = block.conv2
    square = isinstance(conv2, nn.Conv2d) and conv2.stride[0] == conv2.stride[1]
    if not square or conv2.in_channels != conv2.out_channels:
        raise ValueError(f"{kind}.conv2 must be a square-strided Conv2d with as many output channels as input "
                         f"channels (the attention keeps its width), got {conv2}")
    return conv2


@dataclass(frozen=True)
class ResNetCfg:
    """Architecture of one registered model. Every field can be overridden in create_model."""

    layers: tuple[int, int, int, int]
    attn_blocks: tuple[int, int, int, int] = (0, 0, 0, 0)  # how many final blocks per stage are BoT
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck widths (out = 4x)
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    stem_width: int = 64
    stem_kernel: int = 7  # 7: conv7x7/2 + maxpool3x3/2 (stride 4); 3: conv3x3/stem_stride
    stem_stride: int = 1  # 3x3 stem only: 2 skips the full-resolution maps (small, memory-bound layers)
    act: str = "relu"
    se_ratio: float = 0.0  # SE bottleneck as a fraction of the block output (paper: 0.0625)
    se_in_attn: bool = False  # paper text: SE only in conv blocks; paper's param counts: everywhere
    heads: int = 4
    pos: str = "relative"
    attn_impl: str = "auto"  # RelPosMHSA implementation: auto, sdpa, flex, explicit (same function and weights)
    shortcut_act: bool = False
    # Init of the position tables: "std" = N(0, d^-1/2) as the paper intends; "official" = the
    # released snippet's N(mean=d^-1/2, std=1) (it passed d^-1/2 as the mean by mistake).
    pos_init: str = "std"
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over blocks
    img_size: int = 224  # default resolution: sets the attention tables' trained size
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def reduction(self) -> int:
        """Output stride of the last stage (32 for ResNet-50, 16 for the S1 family, 4 for mini)."""
        r = 4 if self.stem_kernel == 7 else self.stem_stride
        for s in self.strides:
            r *= s
        return r


def _per_channel(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Normalisation constants for ``in_chans`` channels: one value is repeated, three averaged."""
    values = tuple(values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    return (sum(values) / len(values),) * in_chans


def _img_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(img_hw) != 2 or min(img_hw) < 1:
        raise ValueError(f"img_size must be an int or (H, W), got {img_size!r}")
    return int(img_hw[0]), int(img_hw[1])


def _instance_cfg(cfg: ResNetCfg, in_chans: int, img_hw: tuple[int, int], num_classes: int) -> dict[str, Any]:
    """The pretrained_cfg fields that follow the instance (its size, channels and classes).

    ``img_size`` is ours (not a timm field): the (H, W) the attention tables were built for.
    """
    r = cfg.reduction
    return {
        "input_size": (in_chans, *img_hw), "img_size": img_hw, "pool_size": (-(-img_hw[0] // r), -(-img_hw[1] // r)),
        "crop_pct": cfg.crop_pct, "mean": _per_channel(cfg.mean, in_chans), "std": _per_channel(cfg.std, in_chans),
        "num_classes": num_classes,
    }


class ResNet(nn.Module):
    """Bottleneck ResNet whose last ``attn_blocks[i]`` blocks of stage i are BoT blocks."""

    __jit_unused_properties__ = ["botnet_arch"]  # Python-side metadata, not for TorchScript

    def __init__(
        self,
        cfg: ResNetCfg,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | Sequence[int] | None = None,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        img_hw = _img_hw(cfg.img_size if img_size is None else img_size)
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False
        act_layer = _act(cfg.act)

        # Children are registered in execution order (conv1, bn1, act1, maxpool, layer1..4) so that
        # torchvision's IntermediateLayerGetter / _resnet_fpn_extractor can run them in sequence.
        if cfg.stem_kernel not in (7, 3):
            raise ValueError(f"stem_kernel must be 7 or 3, got {cfg.stem_kernel}")
        if cfg.stem_stride not in (1, 2) or (cfg.stem_kernel == 7 and cfg.stem_stride != 1):
            raise ValueError(f"stem_stride must be 1 or 2, and 1 with stem_kernel=7; got {cfg.stem_stride}")
        deep = cfg.stem_kernel == 7  # conv7x7/2 + maxpool3x3/2, else conv3x3/stem_stride and no pool
        self.conv1 = nn.Conv2d(in_chans, cfg.stem_width, cfg.stem_kernel, stride=2 if deep else cfg.stem_stride,
                               padding=cfg.stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.act1 = act_layer(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if deep else nn.Identity()
        stem_strides = (2, 2) if deep else (cfg.stem_stride,)
        hw, stride = img_hw, 1
        for s in stem_strides:
            hw, stride = (_down(hw[0], s), _down(hw[1], s)), stride * s

        total_blocks = sum(cfg.layers)
        block_idx = 0
        in_chs = cfg.stem_width
        # Feature levels as timm's ResNets number them: 0 is the stem (act1, before the max-pool),
        # 1-4 are layer1..layer4; timm's keys only, so a neck written for timm's resnet50 fits.
        self.feature_info: list[dict] = [{"num_chs": in_chs, "reduction": stem_strides[0], "module": "act1"}]
        for i, (depth, width, first_stride, n_attn) in enumerate(
            zip(cfg.layers, cfg.widths, cfg.strides, cfg.attn_blocks)
        ):
            if n_attn > depth:
                raise ValueError(f"stage {i + 1}: attn_blocks={n_attn} exceeds its depth {depth}")
            blocks = []
            for j in range(depth):
                s = first_stride if j == 0 else 1
                attn = j >= depth - n_attn
                out_chs = width * Bottleneck.expansion
                se_rd = 0
                if cfg.se_ratio and (not attn or cfg.se_in_attn):
                    se_rd = max(1, int(round(out_chs * cfg.se_ratio)))
                dpr = cfg.drop_path_rate * block_idx / max(total_blocks - 1, 1)
                common = dict(act_layer=act_layer, se_rd=se_rd, shortcut_act=cfg.shortcut_act, drop_path=dpr)
                if attn:
                    blocks.append(BoTBlock(in_chs, width, s, feat_size=hw, heads=cfg.heads, pos=cfg.pos,
                                           attn_impl=cfg.attn_impl, **common))
                else:
                    blocks.append(Bottleneck(in_chs, width, s, **common))
                in_chs = out_chs
                hw = (_down(hw[0], s), _down(hw[1], s))
                stride *= s
                block_idx += 1
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": in_chs, "reduction": stride, "module": name})

        self.num_features = in_chs
        self.inplanes = in_chs  # torchvision's _resnet_fpn_extractor reads this
        _check_head(num_classes, global_pool)
        self.global_pool, self.fc = create_classifier(in_chs, num_classes, pool_type=global_pool)
        self.head_hidden_size = in_chs * self.global_pool.feat_mult()
        self.drop = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        # Replaced by timm's resolved config (with these instance fields) when built through the registry.
        self.pretrained_cfg = {
            "interpolation": INTERPOLATION, "first_conv": "conv1", "classifier": "fc",
            **_instance_cfg(cfg, in_chans, img_hw, num_classes),
        }
        self.default_cfg = self.pretrained_cfg  # older timm code reads this name
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # torchvision's default Linear init is kept (kaiming_uniform a=sqrt(5)) by reset
                m.reset_parameters()
        if self.cfg.pos_init not in ("std", "official"):
            raise ValueError(f"pos_init must be 'std' or 'official', got {self.cfg.pos_init!r}")
        for m in self.modules():
            if isinstance(m, RelPosMHSA):
                m.reset_parameters()  # q/k/v N(0, 0.01), tables N(0, d^-1/2)
                if self.cfg.pos_init == "official":
                    for name, p in m.named_parameters():
                        if name != "qkv.weight":
                            nn.init.normal_(p, mean=m.dim_head**-0.5, std=1.0)
            elif isinstance(m, Bottleneck) and m.zero_init_last:
                nn.init.zeros_(m.bn3.weight)

    # ------------------------------------------------------------------ API
    @property
    def botnet_arch(self) -> str | None:
        """Our registry name of this model (``pretrained_cfg["architecture"]`` is its timm name)."""
        arch = self.pretrained_cfg.get("architecture")
        return resolve_name(arch) if arch else None

    @botnet_arch.setter
    def botnet_arch(self, name: str) -> None:
        self.pretrained_cfg["architecture"] = TIMM_NAMES.get(name, name)

    def attention_layers(self) -> list[tuple[str, RelPosMHSA]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, RelPosMHSA)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for timm's layer-wise LR decay: the stem, then each stage or block."""
        return {"stem": r"^(?:conv1|bn1)\.", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier for ``num_classes`` (0: none); ``global_pool`` "" keeps the feature map."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        _check_head(num_classes, global_pool)
        ref = self.conv1.weight
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, device=ref.device, dtype=ref.dtype
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)
        self.pretrained_cfg["num_classes"] = num_classes

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def _stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-feature API, with timm's ResNet levels (see ``feature_info``):
        0 the stem (``act1``, before the max-pool), 1-4 the outputs of ``layer1``..``layer4``.

        Args:
            indices: None for all five, an int n for the last n, or level indices (negative from the end).
            norm: accepted for timm's API; the network has no final norm to apply.
            stop_early: stop after the last requested level (the first result is then that level's output).
            output_fmt: only "NCHW".
            intermediates_only: return only the list.

        Returns:
            ``(final map, [maps of the requested levels])``, or the list alone with ``intermediates_only``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = _take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take:
            intermediates.append(x)
        x = self.maxpool(x)
        stages = self._stages()[:last] if stop_early else self._stages()
        for level, stage in enumerate(stages, start=1):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if level in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what runs after the last of ``indices`` (and the head), as timm's ResNet does; returns
        the absolute level indices kept."""
        take, last = _take_indices(len(self.feature_info), indices)
        for info in self.feature_info[last + 1:]:
            setattr(self, info["module"], nn.Sequential())  # empty: runs as the identity
        if last == 0:
            self.maxpool = nn.Identity()  # only the stem's map is wanted
        if last < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or last < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        return take

    def forward_feature_maps(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Every feature level by its module name: ``act1`` (the stem), ``layer1``..``layer4``, in
        the order and with the channels and strides of ``feature_info``."""
        x = self.act1(self.bn1(self.conv1(x)))
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        out["act1"] = x
        x = self.maxpool(x)
        for info, stage in zip(self.feature_info[1:], self._stages()):
            x = stage(x)
            out[info["module"]] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)  # (B, stem, H/4, W/4)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # (B, num_features, H/32, W/32) (H/16 for the S1 family)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x))  # (B, head_hidden_size); the map itself if global_pool=""
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_head(num_classes: int, global_pool: str) -> None:
    if not global_pool and num_classes > 0:
        raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")


def _take_indices(n: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's index convention: None = all n, int k = the last k, else indices (negative from the end)."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"last-n index count {indices} is out of range: there are {n} feature levels")
        take = list(range(n - indices, n))
    else:
        take = []
        for i in indices:
            if not -n <= i < n:
                raise ValueError(f"feature index {i} is out of range: there are {n} feature levels (0..{n - 1})")
            take.append(i % n)
        if not take:
            raise ValueError("no feature index given")
    return take, max(take)


# ---------------------------------------------------------------------- configs
_R = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
_S1 = dict(strides=(1, 2, 2, 1), act="silu", se_ratio=0.0625)

MODEL_CFGS: dict[str, ResNetCfg] = {
    **{f"resnet{n}": ResNetCfg(layers=d) for n, d in _R.items()},
    **{f"botnet{n}": ResNetCfg(layers=d, attn_blocks=(0, 0, 0, 3)) for n, d in _R.items()},
    # ImageNet family T3-T7. c5 attends at the c4 resolution (stride 1); every c5 block is a BoT block.
    "botnet_s1_59": ResNetCfg(layers=(3, 4, 6, 6), attn_blocks=(0, 0, 0, 6), img_size=224, **_S1),
    "botnet_s1_110": ResNetCfg(layers=(3, 4, 23, 6), attn_blocks=(0, 0, 0, 6), img_size=224, **_S1),
    "botnet_s1_128": ResNetCfg(layers=(3, 4, 23, 12), attn_blocks=(0, 0, 0, 12), img_size=256, crop_pct=0.95, **_S1),
    "botnet_s1_77": ResNetCfg(layers=(3, 4, 6, 12), attn_blocks=(0, 0, 0, 12), img_size=320, crop_pct=0.95, **_S1),
    # Small model for 28-64 px inputs (Fashion-MNIST demo): 3x3 stem, no max-pool, c5 at 1/4.
    "botnet_mini": ResNetCfg(
        layers=(1, 1, 2, 2), attn_blocks=(0, 0, 0, 2), widths=(16, 32, 64, 128), strides=(1, 2, 2, 1),
        stem_width=32, stem_kernel=3, img_size=28, crop_pct=1.0, mean=(0.5,), std=(0.5,),
    ),
}


def _cfg(name: str) -> dict[str, Any]:
    """timm pretrained config of one model at its default size (no weights are published)."""
    c = MODEL_CFGS[name]
    bot = name.startswith("botnet")
    return {
        **_instance_cfg(c, 3, (c.img_size, c.img_size), 1000), "interpolation": INTERPOLATION,
        "first_conv": "conv1", "classifier": "fc", "license": "apache-2.0",
        "paper_ids": "arXiv:2101.11605" if bot else "arXiv:1512.03385",
        "paper_name": "Bottleneck Transformers for Visual Recognition" if bot else "Deep Residual Learning for Image Recognition",
    }


# timm reads each model's pretrained config from here when it registers (timm names are added by
# the registry for the models registered under another name, e.g. botnet_resnet50).
default_cfgs = generate_default_cfgs({name: {k: v for k, v in _cfg(name).items() if k != "img_size"} for name in MODEL_CFGS})

# create_model keyword arguments that timm's build_model_with_cfg consumes (not ResNet's).
_TIMM_BUILD_KWARGS = frozenset({
    "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args",
    "features_only", "out_indices", "feature_cls", "feature_cfg",
})
_MODEL_KWARGS = frozenset({"num_classes", "in_chans", "img_size", "global_pool"})
N_FEATURE_LEVELS = 5  # timm's ResNet levels: 0 the stem (act1), 1-4 layer1..layer4


def _create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``name`` with timm's ``build_model_with_cfg`` (the one path for botnet and timm)."""
    variant = TIMM_NAMES.get(name, name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # as timm.create_model does
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    cfg = MODEL_CFGS[name]
    fields = set(asdict(cfg))
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    unknown = sorted(set(kwargs) - _MODEL_KWARGS - _TIMM_BUILD_KWARGS)
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; valid: {sorted(fields | _MODEL_KWARGS)} "
                        "and timm's features_only/out_indices/feature_cls/pretrained_cfg(_overlay)")
    if overrides:
        cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})

    features = bool(kwargs.get("features_only", False))
    feature_cfg = {"out_indices": tuple(range(N_FEATURE_LEVELS)), **kwargs.pop("feature_cfg", {})}
    if "out_indices" in kwargs and not features:
        raise TypeError(f"{name}: out_indices needs features_only=True")
    if features:
        out = kwargs.pop("out_indices", feature_cfg["out_indices"])
        levels = "0: act1 (the stem), " + ", ".join(f"{i}: layer{i}" for i in range(1, N_FEATURE_LEVELS))
        try:
            _take_indices(N_FEATURE_LEVELS, out)  # checked here for a clear message; timm resolves it
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name}: bad out_indices {out!r} ({e}); the feature levels are {levels}") from None
        # kept as given (an int is the last n, negatives count from the end), as timm's resnet keeps it
        feature_cfg["out_indices"] = out if isinstance(out, int) else tuple(out)

    # The defaults timm's build_model_with_cfg takes from the pretrained config, resolved here too
    # so that the instance config below agrees with the model built.
    resolved = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    kwargs.setdefault("num_classes", resolved.num_classes)
    kwargs.setdefault("in_chans", resolved.input_size[0])
    if pretrained:
        if not resolved.has_weights:
            raise ValueError(
                f"{variant}: no pretrained weights are published for botnet models; build with pretrained=False "
                "and load your own checkpoint (botnet.load_resnet_weights for ResNet checkpoints), or pass "
                "pretrained_cfg_overlay=dict(file=PATH) to timm.create_model"
            )

    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(ResNet, variant, pretrained, model_cfg=cfg, feature_cfg=feature_cfg, **kwargs)
    if dtype is not None:
        model.to(dtype=dtype)

    # The config follows the instance: its input size, channels and classes (a features_only model
    # keeps timm's reduced config, without num_classes/classifier).
    inst = _instance_cfg(cfg, kwargs["in_chans"], _img_hw(kwargs.get("img_size", cfg.img_size)), kwargs["num_classes"])
    # Preprocessing describes the weights, not the instance: a published folder (timm local-dir /
    # hf-hub) stores the run's mean/std/crop_pct, kept unless the channel count changed.
    if len(resolved.mean) == kwargs["in_chans"] and len(resolved.std) == kwargs["in_chans"]:
        inst.update(mean=tuple(resolved.mean), std=tuple(resolved.std))
    inst["crop_pct"] = resolved.crop_pct
    src_args = kwargs.get("pretrained_model_args")  # set by timm for local-dir: / hf-hub: folders
    if src_args is not None and _img_hw(src_args.get("img_size") or MODEL_CFGS[name].img_size) == inst["img_size"]:
        # the size the run fed the model (it may differ from the tables' img_size), unless overridden here
        inst["input_size"] = (kwargs["in_chans"], *resolved.input_size[1:])
    if features:
        inst.pop("num_classes")
    model.pretrained_cfg.update(inst, **(kwargs.get("pretrained_cfg_overlay") or {}))
    model.default_cfg = model.pretrained_cfg
    return model


# Entry points, as timm's model files have them: fn(pretrained=False, **kwargs), one per name.
@register_model
def resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50 [3,4,6,3]: 25,557,032 parameters, the torchvision layout."""
    return _create("resnet50", pretrained, **kwargs)


@register_model
def resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-101 [3,4,23,3]."""
    return _create("resnet101", pretrained, **kwargs)


@register_model
def resnet152(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-152 [3,8,36,3]."""
    return _create("resnet152", pretrained, **kwargs)


@register_model
def resnet200(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-200 [3,24,36,3]."""
    return _create("resnet200", pretrained, **kwargs)


@register_model
def botnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """BoT50: ResNet-50 with the three c5 blocks made BoT blocks (20.8 M parameters)."""
    return _create("botnet50", pretrained, **kwargs)


@register_model
def botnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """BoT101: ResNet-101 with the three c5 blocks made BoT blocks."""
    return _create("botnet101", pretrained, **kwargs)


@register_model
def botnet152(pretrained: bool = False, **kwargs) -> ResNet:
    """BoT152: ResNet-152 with the three c5 blocks made BoT blocks."""
    return _create("botnet152", pretrained, **kwargs)


@register_model
def botnet200(pretrained: bool = False, **kwargs) -> ResNet:
    """BoT200: ResNet-200 with the three c5 blocks made BoT blocks (the paper's COCO headline)."""
    return _create("botnet200", pretrained, **kwargs)


@register_model
def botnet_s1_59(pretrained: bool = False, **kwargs) -> ResNet:
    """BoTNet-S1-59 (T3, 224 px): blocks [3,4,6,6], stride-1 c5 of BoT blocks, SE, SiLU."""
    return _create("botnet_s1_59", pretrained, **kwargs)


@register_model
def botnet_s1_77(pretrained: bool = False, **kwargs) -> ResNet:
    """BoTNet-S1-77 (T6, 320 px): blocks [3,4,6,12]."""
    return _create("botnet_s1_77", pretrained, **kwargs)


@register_model
def botnet_s1_110(pretrained: bool = False, **kwargs) -> ResNet:
    """BoTNet-S1-110 (T4, 224 px): blocks [3,4,23,6]."""
    return _create("botnet_s1_110", pretrained, **kwargs)


@register_model
def botnet_s1_128(pretrained: bool = False, **kwargs) -> ResNet:
    """BoTNet-S1-128 (T5 at 256 px; T7 at 384 px with img_size=384): blocks [3,4,23,12]."""
    return _create("botnet_s1_128", pretrained, **kwargs)


@register_model
def botnet_mini(pretrained: bool = False, **kwargs) -> ResNet:
    """A small BoT network for 28-64 px images (the Fashion-MNIST CPU demo)."""
    return _create("botnet_mini", pretrained, **kwargs)
