"""leantorch: quantization simulation, post-training quantization and compression for PyTorch models."""

from .errors import (
    CalibrationDataError,
    ConfigError,
    DataError,
    DistributedMismatchError,
    EncodingsFileError,
    EncodingsMissingError,
    ExportError,
    InputShapeError,
    InvalidOptionError,
    LeanTorchError,
    NonFiniteModelError,
    OutputPathError,
    ParallelBackendError,
    RayNotInstalledError,
    TraceError,
    TrainingDataError,
    TrainingDivergedError,
    UnknownLayerError,
    UnsupportedBitwidthError,
)
from .graph import prepare

__version__ = "0.1.0"
from . import analysis, compress, evaluation, graph, metrics
from .analysis import AnalysisReport, analyze
from .compress import CompressionError, DistillConfig, DistillResult, RefitResult, distill, refit_layers
from .evaluation import OutputScore, agreement_score, sqnr_score
from .model_state import ModelState, model_state
from .ptq.adaround import AdaroundConfig, adaround
from .ptq.auto import AutoQuantResult, EvalFunctionError, auto_quant
from .ptq.bias_correction import BiasCorrectionConfig, bias_correction
from .ptq.block_reconstruction import BlockReconstructionConfig, reconstruct
from .ptq.bn_fold import fold_batch_norms
from .ptq.cle import cross_layer_scale, equalize
from .ptq.downstream_ranges import DownstreamRange, downstream_ranges
from .ptq.gptq import GptqConfig, gptq
from .ptq.mixed_precision import Candidate, MixedPrecisionConfig, MixedPrecisionResult, mixed_precision
from .ptq.outlier_migration import OutlierMigrationConfig, migrate_outliers
from .ptq.relu6 import replace_relu6
from .ptq.seq_mse import SeqMseConfig, seq_mse
from .quant import qat
from .quant.config import OpRule, QuantSimConfig
from .quant.encoding import Encoding, compute_encoding
from .quant.estimators import QuantScheme
from .quant.float_formats import set_float_format
from .quant.quantizer import Quantizer
from .quant.sim import QuantSim

__all__ = [
    "ModelState",
    "model_state",
    "AdaroundConfig",
    "BiasCorrectionConfig",
    "GptqConfig",
    "OutlierMigrationConfig",
    "SeqMseConfig",
    "__version__",
    "CalibrationDataError",
    "ConfigError",
    "DataError",
    "DistributedMismatchError",
    "EncodingsFileError",
    "EncodingsMissingError",
    "ExportError",
    "InputShapeError",
    "InvalidOptionError",
    "LeanTorchError",
    "NonFiniteModelError",
    "OutputPathError",
    "ParallelBackendError",
    "RayNotInstalledError",
    "TraceError",
    "TrainingDataError",
    "TrainingDivergedError",
    "UnknownLayerError",
    "UnsupportedBitwidthError",
    "prepare",
    "analysis",
    "compress",
    "evaluation",
    "graph",
    "metrics",
    "AnalysisReport",
    "analyze",
    "CompressionError",
    "OutputScore",
    "agreement_score",
    "sqnr_score",
    "adaround",
    "AutoQuantResult",
    "EvalFunctionError",
    "auto_quant",
    "bias_correction",
    "fold_batch_norms",
    "cross_layer_scale",
    "equalize",
    "gptq",
    "migrate_outliers",
    "replace_relu6",
    "seq_mse",
    "qat",
    "OpRule",
    "QuantSimConfig",
    "Encoding",
    "compute_encoding",
    "QuantScheme",
    "Quantizer",
    "QuantSim",
    "set_float_format",
    "Candidate",
    "MixedPrecisionConfig",
    "MixedPrecisionResult",
    "mixed_precision",
    "BlockReconstructionConfig",
    "reconstruct",
    "DownstreamRange",
    "downstream_ranges",
    "DistillConfig",
    "DistillResult",
    "distill",
    "RefitResult",
    "refit_layers",
]
