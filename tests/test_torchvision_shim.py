"""``benchmarks/shims/torchvision``: what timm needs from torchvision, and a clear refusal for everything else.

Run in a fresh interpreter: the shim installs an import hook for ``torchvision.*``, which must not leak into the
other tests of this process.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

_SHIMS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "shims"

_CHECKS = """
import pytest, torch
from torch import nn
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d
assert torchvision.SHIM

# The same function as an nn.BatchNorm2d in eval mode with the same statistics (float32 rounding apart), and a
# BatchNorm2d checkpoint loads into it (num_batches_tracked dropped, as torchvision does).
torch.manual_seed(0)
bn = nn.BatchNorm2d(5, eps=1e-3)
bn.running_mean.normal_(); bn.running_var.uniform_(0.2, 3.0); bn.weight.data.normal_(); bn.bias.data.normal_()
frozen = FrozenBatchNorm2d(5, eps=1e-3)
frozen.load_state_dict(bn.state_dict())
assert not list(frozen.parameters()) and sorted(dict(frozen.named_buffers())) == [
    "bias", "running_mean", "running_var", "weight"]
x = torch.randn(4, 5, 6, 6)
want = bn.eval().double()(x.double())
assert torch.allclose(frozen(x).double(), want, rtol=1e-5, atol=1e-5)
assert repr(frozen) == "FrozenBatchNorm2d(5, eps=0.001)"

# timm.data imports these at module level: importable placeholders, failing only when used.
import torchvision.transforms as T
from torchvision.transforms.functional import InterpolationMode
from torchvision.datasets import CIFAR10
class MaybeToTensor(T.ToTensor):
    pass
assert {InterpolationMode.NEAREST: 1}[InterpolationMode.NEAREST] == 1
for use in (lambda: T.ToTensor(), lambda: MaybeToTensor(), lambda: CIFAR10("x")):
    with pytest.raises(ImportError, match="shim"):
        use()

# Anything else is refused when imported, with the reason.
for name in ("torchvision.models", "torchvision.models.feature_extraction", "torchvision.utils", "torchvision.io"):
    with pytest.raises(ImportError, match="benchmark shim"):
        __import__(name)
with pytest.raises(ImportError, match="shim"):
    from torchvision.ops import nms
print("ok")
"""


def test_shim_provides_frozen_batch_norm_placeholders_and_clear_refusals() -> None:
    code = f"import sys; sys.path.insert(0, {str(_SHIMS)!r})\n" + textwrap.dedent(_CHECKS)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
