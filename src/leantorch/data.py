"""Data: built-in samples that need no network (random crops of scikit-image's photographs, the
digits set) and the command line's loading of user data (a directory of images or a ``.npy`` array).

The crops form an unlabeled image set for calibration and for measuring agreement with the float model.
Use disjoint seeds for calibration and evaluation.

User data is checked where it is loaded, so that a bad file is named before any long computation: an
unreadable or corrupt file, an empty set, NaN/Inf values (:func:`check_finite`), samples the model
cannot run (:func:`check_model_accepts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError, LeanTorchError

__all__ = [
    "IMAGE_SUFFIXES",
    "PHOTOGRAPHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "sample_images",
    "batches",
    "channels_last",
    "digits",
    "load_data",
    "check_finite",
    "check_model_accepts",
]

#: Image file types read from a ``--data`` directory.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

#: The natural photographs bundled with scikit-image (no download needed).
PHOTOGRAPHS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "rocket",
    "retina",
)

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


def _chosen_photographs(names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    unknown = [n for n in names if n not in PHOTOGRAPHS]
    if unknown or not names:
        raise DataError(f"photos={list(names)!r}: choose one or more of {list(PHOTOGRAPHS)}")
    every = _photographs()
    return tuple(every[PHOTOGRAPHS.index(n)] for n in names)


def sample_images(
    count: int, size: int = 224, seed: int = 0, normalize: bool = True, photos: Sequence[str] | None = None
) -> torch.Tensor:
    """``count`` random crops (scale 25–100% of the short side, random flip) resized to ``size``².

    Returns a float tensor ``[count, 3, size, size]``, ImageNet-normalised unless ``normalize=False``.
    ``photos``: crop only these of :data:`PHOTOGRAPHS` (e.g. to score on photographs a method never saw).

    Example:
        >>> sample_images(2, size=64, seed=0).shape
        torch.Size([2, 3, 64, 64])
        >>> sample_images(1, size=32, photos=["moon"]).shape
        torch.Size([1, 3, 32, 32])
    """
    gen = torch.Generator().manual_seed(seed)
    photos = _photographs() if photos is None else _chosen_photographs(photos)
    # Each crop is written into the result at once: a list of crops stacked at the end held the data twice, and
    # its thousands of freed crops stayed in the process as fragmented heap (4,096 crops: 2.3 GB of images left
    # 7.6 GB resident before any work started).
    batch = torch.empty(count, 3, size, size)
    for i in range(count):
        img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
        _, h, w = img.shape
        side = max(16, int(min(h, w) * (0.25 + 0.75 * float(torch.rand(1, generator=gen)))))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = img[:, top : top + side, left : left + side]
        if float(torch.rand(1, generator=gen)) < 0.5:
            crop = crop.flip(-1)
        batch[i] = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    batch.clamp_(0.0, 1.0)
    if normalize:
        batch.sub_(torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)).div_(torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))
    return batch


def batches(data: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split a tensor into batches along dim 0.

    Example:
        >>> [b.shape[0] for b in batches(torch.zeros(5, 2), 2)]
        [2, 2, 1]
    """
    return list(torch.split(data, batch_size))


def channels_last(model: nn.Module, data: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A model with 2-D convolutions (converted in place) and its image batches in the channels-last memory
    layout; anything else unchanged.

    Why: PyTorch's CPU convolutions (depthwise ones above all) run 1.5–2× faster on NHWC tensors, and every
    flow of the ``leantorch`` command is dominated by forward passes; the values are the same (only the float summation
    order inside a convolution may differ, by about 1e-6 relative), and the export does not depend on it.

    Example:
        >>> m, x = channels_last(nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8))
        >>> nhwc = torch.channels_last
        >>> x.is_contiguous(memory_format=nhwc), m.weight.is_contiguous(memory_format=nhwc)
        (True, True)
    """
    if data.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model, data
    return model.to(memory_format=torch.channels_last), data.contiguous(memory_format=torch.channels_last)


def digits(
    size: int = 8, test_fraction: float = 0.25, seed: int = 0
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


def load_data(spec: str, count: int, image_size: int, error: type[DataError] = DataError) -> torch.Tensor:
    """Up to ``count`` samples from ``DIR`` (images, resized to ``image_size``² and ImageNet-normalised),
    ``file.npy`` (an array ``[N, ...]`` of model inputs) or ``builtin:images`` (photograph crops).

    Raises:
        DataError (``error``, e.g. CalibrationDataError): the path does not exist, a file cannot be read
        or decoded (the message names it), no samples, or a sample contains NaN/Inf.

    Example:
        >>> load_data("builtin:images", 2, 32).shape
        torch.Size([2, 3, 32, 32])
    """
    if spec == "builtin:images":
        return sample_images(count, size=image_size, seed=0)
    path = Path(spec)
    if not path.exists():
        raise error(f"--data {spec} does not exist (give a directory of images, a .npy file or builtin:images)")
    if path.is_dir():
        data = _load_image_dir(path, count, image_size, error)
    elif path.suffix.lower() == ".npy":
        data = _load_npy(path, count, error)
    else:
        raise error(f"--data {spec} is neither a directory, a .npy file nor builtin:images")
    check_finite(data, f"--data {spec}", error)
    return data


def _load_npy(path: Path, count: int, error: type[DataError]) -> torch.Tensor:
    try:
        with open(path, "rb") as file:
            is_npy = file.read(6) == b"\x93NUMPY"  # without the header numpy suggests unpickling: not the fix
        # Memory-mapped: only the first ``count`` samples of a large file are read.
        array = np.load(path, mmap_mode="r", allow_pickle=False) if is_npy else None
    except (OSError, ValueError, EOFError) as exc:
        raise error(f"--data {path}: cannot read it as a .npy array ({exc})") from exc
    if array is None:
        raise error(f"--data {path} is not a .npy file (no NumPy header); save arrays with numpy.save")
    if array.ndim == 0 or len(array) == 0:
        raise error(f"--data {path} holds an array of shape {array.shape}; expected [N, ...] with N ≥ 1 samples")
    try:
        return torch.from_numpy(np.array(array[:count], dtype=np.float32))
    except (ValueError, TypeError) as exc:
        raise error(f"--data {path} holds {array.dtype} values, not numbers ({exc})") from exc


def _load_image_dir(path: Path, count: int, image_size: int, error: type[DataError]) -> torch.Tensor:
    try:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    except OSError as exc:
        raise error(f"--data {path}: cannot list the directory ({exc.strerror})") from exc
    if not files:
        raise error(f"--data {path} has no {'/'.join(IMAGE_SUFFIXES)} images")
    images = [_read_image(file, image_size, error) for file in files]
    batch = torch.stack(images)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    return (batch - mean) / std


def _read_image(file: Path, image_size: int, error: type[DataError]) -> torch.Tensor:
    """One image as ``[3, image_size, image_size]`` in [0, 1]; grey and grey+alpha become RGB."""
    from skimage.io import imread

    try:
        arr = np.asarray(imread(file))
    except Exception as exc:  # decoders raise anything (OSError, ValueError, SyntaxError…) on a bad file
        raise error(
            f"--data {file}: cannot read this image ({type(exc).__name__}: {exc}); remove or replace the file"
        ) from exc
    if arr.ndim == 3 and arr.shape[-1] in (1, 2):  # grey (+ alpha)
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or 0 in arr.shape:
        raise error(f"--data {file}: the image has shape {arr.shape}; expected a grey or RGB(A) image")
    scale = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0  # 8- or 16-bit files
    img = torch.from_numpy(arr[..., :3].astype(np.float32) / scale).permute(2, 0, 1)[None]
    return F.interpolate(img, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)[0]


def check_finite(data: torch.Tensor, source: str, error: type[DataError] = DataError) -> None:
    """Raise ``error`` naming the first sample (index along dim 0) that holds NaN or Inf.

    Example:
        >>> check_finite(torch.tensor([[1.0], [float("nan")]]), "--data x.npy")
        Traceback (most recent call last):
        ...
        leantorch.errors.DataError: --data x.npy: sample 1 contains NaN or Inf (1 of 2 samples); fix or remove it
    """
    bad = (~torch.isfinite(data.reshape(len(data), -1))).any(dim=1).nonzero().flatten()
    if len(bad):
        raise error(
            f"{source}: sample {int(bad[0])} contains NaN or Inf ({len(bad)} of {len(data)} samples); fix or remove it"
        )


def check_model_accepts(model: nn.Module, data: torch.Tensor, source: str, error: type[DataError] = DataError) -> None:
    """Run ``model`` on the first sample, so that data of the wrong shape is reported at once, with the
    shape the failing (or first) Conv/Linear layer takes, not by a traceback deep in a long calibration.

    Example:
        >>> check_model_accepts(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(2, 5, 8, 8), "--data x.npy")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        leantorch.errors.DataError: --data x.npy: the model cannot run on a sample of shape (5, 8, 8) (...); \
its first layer 0 (Conv2d) takes samples shaped (3, H, W)
    """
    first: list[tuple[str, nn.Module]] = []
    active: list[tuple[str, nn.Module]] = []  # layers entered and not left: a failure happened in the last

    def entering(name: str, module: nn.Module) -> None:  # hooks must return None: a value replaces the data
        first[:] = first or [(name, module)]
        active.append((name, module))

    def leaving(*_: object) -> None:
        active.pop()

    hooks = []
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            hooks.append(layer.register_forward_pre_hook(lambda m, _, name=name: entering(name, m)))
            hooks.append(layer.register_forward_hook(leaving))
    try:
        with torch.no_grad():
            model(data[:1])
    except Exception as exc:  # any failure of the user's model on the user's sample is a mismatch to report
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise error(
            f"{source}: the model cannot run on a sample of shape {tuple(data.shape[1:])} "
            f"({reason}){_expected_shape(first, active)}"
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()


def _expected_shape(first: list[tuple[str, nn.Module]], active: list[tuple[str, nn.Module]]) -> str:
    """What the failing layer (else the first one) takes, as a clause of the error message."""
    if not first:
        return ""
    name, layer = active[-1] if active else first[0]
    if isinstance(layer, nn.Linear):
        shape = f"(..., {layer.in_features})"
    else:
        shape = "(" + ", ".join([str(layer.in_channels), *"DHW"[5 - layer.weight.dim() :]]) + ")"
    if (name, layer) == first[0]:
        return f"; its first layer {name} ({type(layer).__name__}) takes samples shaped {shape}"
    return f"; it fails in layer {name} ({type(layer).__name__}), which takes inputs shaped {shape}"
