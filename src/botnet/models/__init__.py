"""Model family, registry and factory (``create_model``, published folders included)."""
from botnet.models._factory import create_model
from botnet.models._registry import TIMM_NAMES, build_model, is_model, list_models, register_model, resolve_name
from botnet.models.botnet import MODEL_CFGS, BoTBlock, Bottleneck, ResNet, ResNetCfg
from botnet.models.convert import Conversion, ConversionReport, botnet_from_resnet
from botnet.models.weights import TransferReport, load_resnet_weights

__all__ = [
    "ResNet", "ResNetCfg", "Bottleneck", "BoTBlock", "MODEL_CFGS", "create_model", "build_model", "list_models",
    "is_model", "register_model", "resolve_name", "load_resnet_weights", "TransferReport", "TIMM_NAMES",
    "botnet_from_resnet", "Conversion", "ConversionReport",
]
