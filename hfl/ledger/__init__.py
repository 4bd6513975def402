"""Hash-chained ledger of global models with validator quorum certificates (sans-I/O core + SQLite store)."""

from .block import (
    Block,
    BlockHeader,
    CommitteeMember,
    LedgerError,
    Vote,
    aggregate_recorded,
    check_quorum,
    compute_model,
    genesis_header,
    max_faulty,
    next_header,
    propose,
    quorum_size,
    select_quorum,
)
from .store import BlockRecord, LedgerStore
from .verify import verify_ledger

__all__ = [
    "Block",
    "BlockHeader",
    "BlockRecord",
    "CommitteeMember",
    "LedgerError",
    "LedgerStore",
    "Vote",
    "aggregate_recorded",
    "check_quorum",
    "compute_model",
    "genesis_header",
    "max_faulty",
    "next_header",
    "propose",
    "quorum_size",
    "select_quorum",
    "verify_ledger",
]
