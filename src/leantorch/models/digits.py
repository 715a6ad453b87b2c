"""Small CNNs for scikit-learn's ``digits`` (a real labelled task that trains in seconds on a CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DigitsCNN", "train_classifier", "accuracy"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    """Three conv+BN+ReLU layers, max-pool, global average pool, linear head; input ``[N, 1, 8, 8]``.

    Example:
        >>> DigitsCNN()(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(1, width), _conv_bn_relu(width, width), nn.MaxPool2d(2), _conv_bn_relu(width, 2 * width)
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(x, 1))


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy (shuffled mini-batches, cosine decay); eval mode.

    Example:
        >>> model = train_classifier(nn.Linear(4, 2), torch.randn(32, 4), torch.randint(0, 2, (32,)), epochs=1)
        >>> model.training
        False
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(y) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode, without gradients.

    Example:
        >>> accuracy(nn.Linear(4, 2), torch.randn(8, 4), torch.zeros(8, dtype=torch.long)) <= 1.0
        True
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            out = model(x[start : start + batch_size].to(device))
            correct += int((out.argmax(-1).cpu() == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(y)
