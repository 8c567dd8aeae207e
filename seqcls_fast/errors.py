"""The exceptions seqcls_fast raises for bad input, each catchable both as
the builtin its message implies and as what ``nn.LSTM`` raises for the same
mistake, so code written around nn.LSTM (``except RuntimeError``) keeps
working after the swap."""


class ShapeError(ValueError, RuntimeError):
    """A wrong size or rank (nn.LSTM: RuntimeError for sizes, ValueError for rank)."""


class StateTypeError(TypeError, RuntimeError, IndexError):
    """hx that is not a (h_0, c_0) pair of tensors (nn.LSTM: RuntimeError, or
    IndexError for a single tensor)."""


class DtypeMismatchError(TypeError, ValueError):
    """Input and parameters of different dtypes (nn.LSTM: ValueError)."""
