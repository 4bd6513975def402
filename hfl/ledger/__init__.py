"""Hash-chained ledger of global models with validator quorum certificates (sans-I/O core + SQLite store)."""

from .block import (
    Block,
    BlockHeader,
    CommitteeMember,
    LedgerError,
    Vote,
    check_quorum,
    genesis_header,
    max_faulty,
    quorum_size,
    select_quorum,
)
from .store import BlockRecord, LedgerStore

__all__ = [
    "Block",
    "BlockHeader",
    "BlockRecord",
    "CommitteeMember",
    "LedgerError",
    "LedgerStore",
    "Vote",
    "check_quorum",
    "genesis_header",
    "max_faulty",
    "quorum_size",
    "select_quorum",
]
