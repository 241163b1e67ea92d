"""The exceptions of nsa_flow_rs: all subclasses of ValueError, carrying the Rust message."""


class NsaFlowError(ValueError):
    """Any error reported by nsa-flow (the base class)."""


class NonFiniteError(NsaFlowError):
    """An input holds NaN/Inf, or a computation on finite input was not finite."""


class ShapeError(NsaFlowError):
    """Wrong number of dimensions, mismatched or empty shapes, k > p, a zero matrix, a dtype
    that is not a real number."""


class InvalidParameterError(NsaFlowError):
    """A parameter outside its domain (w outside [0, 1], max_iter = 0, ...)."""


class UnknownNameError(NsaFlowError):
    """An unknown name (retraction, optimizer, mode, backend, option, ...)."""


class BackendError(NsaFlowError):
    """The requested backend (GPU) is unavailable or failed."""


class NotDifferentiableError(NsaFlowError):
    """The layer's backward has no exact derivative for these settings."""


class ResourceError(NsaFlowError):
    """A request beyond the memory budget, or a size that overflows."""


__all__ = [
    "NsaFlowError",
    "NonFiniteError",
    "ShapeError",
    "InvalidParameterError",
    "UnknownNameError",
    "BackendError",
    "NotDifferentiableError",
    "ResourceError",
]
