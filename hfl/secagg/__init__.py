"""Sans-I/O secure aggregation (Bonawitz et al. 2017 with signed key advertisements) for one bucket."""

from hfl.secagg.aggregator import AggregatorStage, BucketAggregator
from hfl.secagg.errors import (
    BucketAbandoned,
    DuplicateMessageError,
    InconsistentUnmaskRequestError,
    InvalidInputError,
    InvalidMessageError,
    KeySubstitutionError,
    ReconstructionError,
    SecAggConfigError,
    SecAggError,
    ShareDecryptionError,
    StageError,
    UnknownMemberError,
    WrongBucketError,
    WrongRoundError,
)
from hfl.secagg.member import MemberStage, SecAggMember
from hfl.secagg.messages import (
    BucketSum,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from hfl.secagg.protocol import (
    MIN_BUCKET_SIZE,
    STAGE_NAMES,
    Stage,
    check_threshold,
    default_threshold,
    unmask_threshold,
)
from hfl.secagg.quantize import QuantConfig, QuantizationError, dequantize, dequantize_sum, quantize
from hfl.secagg.simulate import run_bucket_in_memory

__all__ = [
    "MIN_BUCKET_SIZE",
    "STAGE_NAMES",
    "AggregatorStage",
    "BucketAbandoned",
    "BucketAggregator",
    "BucketSum",
    "DuplicateMessageError",
    "EncryptedShare",
    "InconsistentUnmaskRequestError",
    "InvalidInputError",
    "InvalidMessageError",
    "KeyAdvertisement",
    "KeySubstitutionError",
    "MaskedInput",
    "MemberStage",
    "QuantConfig",
    "QuantizationError",
    "ReconstructionError",
    "SecAggConfigError",
    "SecAggError",
    "SecAggMember",
    "ShareDecryptionError",
    "Stage",
    "StageError",
    "UnknownMemberError",
    "UnmaskRequest",
    "UnmaskResponse",
    "WrongBucketError",
    "WrongRoundError",
    "check_threshold",
    "default_threshold",
    "dequantize",
    "dequantize_sum",
    "quantize",
    "run_bucket_in_memory",
    "unmask_threshold",
]
