"""``create_model``: a registered name, or a published model, as one call (timm's ``_factory``).

The registry (:mod:`botnet.models._registry`) builds registered names and knows nothing above it;
this factory reads ``local-dir:`` / ``hf-hub:`` names and ``pretrained=FOLDER`` and hands them to
:mod:`botnet.models.pretrained`, which checks the folder and loads it through timm's loader.
"""
from __future__ import annotations

import os

from torch import nn

from botnet.models._registry import build_model

__all__ = ["create_model"]


def create_model(
    name: str | None,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    pretrained: bool | str | os.PathLike = False,
    **overrides,
) -> nn.Module:
    """Build a registered model (the same model ``timm.create_model`` builds under the timm name).

    Args:
        name: one of :func:`list_models` (or its timm name, e.g. ``botnet_resnet50``), or a published
            model as ``local-dir:PATH`` / ``hf-hub:ORG/NAME`` (then ``pretrained`` is implied).
        num_classes: classifier outputs (default 1000, or the published model's); 0 removes the
            classifier (``fc`` becomes Identity).
        img_size: image size the attention tables are built for (``None``: the model's default
            resolution). It does not restrict the input: every model accepts any size.
        in_chans: input channels (default 3, or the published model's).
        pretrained: a folder written by ``botnet publish`` (or ``hf-hub:ORG/NAME``): the model is
            built with the options stored there and loaded with its weights by timm's loader; any
            option given here overrides the stored one (another ``num_classes`` gets a new head).
        **overrides: any architecture option of :class:`botnet.models.ResNet` (e.g. ``pos="none"``,
            ``shortcut_act=True``, ``se_in_attn=True``, ``drop_path_rate=0.1``), ``global_pool``
            (timm's pooling types, ``""`` for none), or timm's ``features_only=True`` with
            ``out_indices`` for a feature extractor. The levels are numbered as in timm's ResNets:
            0 the stem (``act1``, stride 2), 1-4 ``layer1``..``layer4`` (strides 4-32 for
            botnet50); the default is all five, as timm's.
    """
    if isinstance(name, str) and name.startswith(("local-dir:", "hf-hub:")):
        name, pretrained = None, name
    if pretrained and not isinstance(pretrained, bool):
        from botnet.models.pretrained import create_pretrained

        return create_pretrained(name, pretrained, num_classes=num_classes, img_size=img_size, in_chans=in_chans,
                                 **overrides)
    return build_model(name, num_classes=num_classes, img_size=img_size, in_chans=in_chans,
                       pretrained=bool(pretrained), **overrides)
