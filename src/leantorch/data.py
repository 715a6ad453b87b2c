"""Built-in sample data that needs no network: random crops of scikit-image's photographs.

The crops form an unlabeled image set for calibration and for measuring agreement with the float model.
Use disjoint seeds for calibration and evaluation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .errors import LeanTorchError

#: The natural photographs bundled with scikit-image (no download needed).
PHOTOGRAPHS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "moon", "rocket", "retina")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def _photographs() -> tuple[torch.Tensor, ...]:
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise LeanTorchError("sample images need scikit-image: pip install 'leantorch[demo]'") from exc
    images = []
    for name in PHOTOGRAPHS:
        arr = np.asarray(getattr(skimage.data, name)())
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        images.append(torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).float() / 255.0)
    return tuple(images)


def sample_images(count: int, size: int = 224, seed: int = 0, normalize: bool = True) -> torch.Tensor:
    """``count`` random crops (scale 25–100% of the short side, random flip) resized to ``size``².

    Returns a float tensor ``[count, 3, size, size]``, ImageNet-normalised unless ``normalize=False``.

    Example:
        >>> sample_images(2, size=64, seed=0).shape
        torch.Size([2, 3, 64, 64])
    """
    gen = torch.Generator().manual_seed(seed)
    photos = _photographs()
    crops = []
    for _ in range(count):
        img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
        _, h, w = img.shape
        side = max(16, int(min(h, w) * (0.25 + 0.75 * float(torch.rand(1, generator=gen)))))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = img[:, top:top + side, left:left + side]
        if float(torch.rand(1, generator=gen)) < 0.5:
            crop = crop.flip(-1)
        crops.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False)[0])
    batch = torch.stack(crops).clamp_(0.0, 1.0)
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
        batch = (batch - mean) / std
    return batch


def batches(data: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split a tensor into batches along dim 0.

    Example:
        >>> [b.shape[0] for b in batches(torch.zeros(5, 2), 2)]
        [2, 2, 1]
    """
    return list(torch.split(data, batch_size))


def digits(size: int = 8, test_fraction: float = 0.25, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 labelled 8×8 handwritten digits as ``(x_train, y_train, x_test, y_test)``.

    Images are ``[N, 1, size, size]`` floats scaled to ``[0, 1]`` then standardised with the training
    set's mean and standard deviation (bilinear upsampling when ``size > 8``); the split is a fixed
    random permutation (``seed``), so results are comparable between runs.

    Example:
        >>> x_train, y_train, x_test, y_test = digits(size=8)
        >>> x_train.shape, x_test.shape, int(y_train.max())
        (torch.Size([1348, 1, 8, 8]), torch.Size([449, 1, 8, 8]), 9)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise LeanTorchError("the digits data set needs scikit-learn: pip install 'leantorch[demo]'") from exc
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    return images[train], labels[train], images[test], labels[test]
