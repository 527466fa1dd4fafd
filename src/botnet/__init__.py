"""botnet: Bottleneck Transformers for Visual Recognition (arXiv 2101.11605) in PyTorch."""
__version__ = "0.1.0"

from botnet.layers import RelPosMHSA  # noqa: E402,F401
from botnet.models import (  # noqa: E402,F401
    ResNet,
    create_model,
    list_models,
    load_resnet_weights,
)
