"""Reference models used by the demo, the tests and the benchmarks (no torchvision needed)."""

from .digits import DigitsCNN, accuracy, train_classifier
from .efficientnet import efficientnet_lite0
from .resnet import ResNetSmall
from .transformer import TransformerClassifier, TransformerEncoderBlock

__all__ = [
    "DigitsCNN",
    "accuracy",
    "train_classifier",
    "efficientnet_lite0",
    "ResNetSmall",
    "TransformerClassifier",
    "TransformerEncoderBlock",
]
