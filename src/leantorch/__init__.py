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
from .quant.config import OpRule, QuantSimConfig
from .quant.encoding import Encoding, compute_encoding
from .quant.estimators import QuantScheme
from .quant.quantizer import Quantizer
from .quant.sim import QuantSim
from .quant import qat
from . import graph, metrics
from .ptq.bn_fold import fold_batch_norms
from .ptq.cle import cross_layer_scale, equalize
from .ptq.relu6 import replace_relu6
from .ptq.bias_correction import bias_correction
from .ptq.adaround import adaround
from .ptq.gptq import gptq
from .ptq.seq_mse import seq_mse
from .ptq.auto import AutoQuantResult, EvalFunctionError, auto_quant
from . import analysis
from .analysis import AnalysisReport, analyze
from . import compress
from .compress import CompressionError
from . import evaluation
from .evaluation import OutputScore, agreement_score, sqnr_score
