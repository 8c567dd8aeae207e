"""seqcls_fast: fused LSTM, GRU and RNN layers and masked attention pooling
kernels for variable-length sequence classification in PyTorch."""
from . import _ops  # noqa: F401  (registers fake kernels and autograd)
from . import reference  # noqa: F401  (plain-PyTorch baselines, public)
from ._ops import gru_layer, lstm_layer, masked_attention_pool, rnn_layer
from .classifier import LSTMClassifier
from .gru import GRU
from .lstm import LSTM
from .onnx_export import onnx_translation_table
from .plan import LengthPlan
from .pooling import MaskedAttentionPooling
from .rnn import RNN

__all__ = ["LSTM", "GRU", "RNN", "MaskedAttentionPooling", "LSTMClassifier", "LengthPlan",
           "lstm_layer", "gru_layer", "rnn_layer", "masked_attention_pool",
           "onnx_translation_table"]
__version__ = "0.1.0"
