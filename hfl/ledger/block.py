"""Ledger blocks: headers, validator votes and quorum certificates.

A block header commits to everything a validator re-checks for round r: the previous block, the base
and new global models, the bucket sums (by hash), the aggregation rule and its parameters, which
buckets were flagged, the committee and the signed round configuration. A block is a header plus a
quorum certificate: accepting votes signed by at least ``quorum`` committee members.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hfl.crypto.signing import InvalidSignature, SigningKey, verify
from hfl.hashing import HASH_LEN, ZERO_HASH, canonical_json, hash_json, hash_vector

__all__ = [
    "BLOCK_DOMAIN",
    "GENESIS_RULE",
    "VOTE_DOMAIN",
    "Block",
    "BlockHeader",
    "CommitteeMember",
    "LedgerError",
    "Vote",
    "check_quorum",
    "committee_size_for",
    "genesis_header",
    "max_faulty",
    "model_vector",
    "quorum_size",
    "select_quorum",
]

BLOCK_DOMAIN = b"hfl/block/v1"
VOTE_DOMAIN = b"hfl/vote/v1"
GENESIS_RULE = "genesis"
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64


class LedgerError(Exception):
    """A ledger check failed. ``round`` names the block concerned, when there is one."""

    def __init__(self, message: str, round: int | None = None) -> None:
        if round is not None:
            message = f"block {round}: {message}"
        super().__init__(message)
        self.round = round


# --------------------------------------------------------------------------------------------- helpers


def max_faulty(n: int) -> int:
    """Largest number of faulty validators f a committee of n tolerates: f = (n - 1) // 3."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"committee size must be a positive whole number, got {n!r}")
    return (int(n) - 1) // 3


def committee_size_for(f: int) -> int:
    """The smallest committee that tolerates f faulty validators: 3f + 1 (``max_faulty`` the other way)."""
    return 3 * f + 1


def quorum_size(committee_size: int) -> int:
    """Accepting votes needed for a quorum certificate: 2f + 1."""
    return 2 * max_faulty(committee_size) + 1


def _int(value: Any, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


def _hash(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_LEN:
        raise ValueError(f"{what} must be {HASH_LEN} bytes, got {value!r:.80}")
    return bytes(value)


def _json_obj(value: Any, what: str) -> dict[str, Any]:
    """A private, JSON-normalised copy of a mapping (so hashing and round trips agree exactly)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dictionary, got {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise ValueError(f"{what} keys must all be text")
    try:
        out = json.loads(canonical_json(dict(value)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must hold only JSON values (no NaN or infinity): {exc}") from None
    if not isinstance(out, dict):
        raise ValueError(f"{what} must be a dictionary")
    return out


def _unhex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} is not valid hex") from None


# ------------------------------------------------------------------------------------------ committee


@dataclass(frozen=True)
class CommitteeMember:
    """A validator on the round's committee: its node id and Ed25519 public key."""

    node_id: str
    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError("a committee member needs a non-empty node id")
        if not isinstance(self.public_key, bytes | bytearray) or len(self.public_key) != PUBLIC_KEY_LEN:
            raise ValueError(f"committee member {self.node_id!r} needs a {PUBLIC_KEY_LEN}-byte public key")
        object.__setattr__(self, "public_key", bytes(self.public_key))

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "public_key": self.public_key.hex()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CommitteeMember:
        return cls(node_id=d["node_id"], public_key=_unhex(d["public_key"], "public_key"))


# --------------------------------------------------------------------------------------------- header


@dataclass(frozen=True)
class BlockHeader:
    """Everything a block commits to. Round 0 is the genesis header.

    ``rule_params`` and ``extra`` are copied and JSON-normalised at construction (tuples become lists);
    treat them as read-only.
    """

    round: int
    prev_hash: bytes
    base_model_hash: bytes
    model_hash: bytes
    bucket_hashes: tuple[bytes, ...]
    bucket_counts: tuple[int, ...]
    rule: str
    rule_params: dict[str, Any]
    flagged: tuple[int, ...]
    committee: tuple[CommitteeMember, ...]
    quorum: int
    config_hash: bytes
    extra: dict[str, Any]

    def __post_init__(self) -> None:
        s = object.__setattr__
        r = _int(self.round, "round")
        s(self, "round", r)
        s(self, "prev_hash", _hash(self.prev_hash, "prev_hash"))
        s(self, "base_model_hash", _hash(self.base_model_hash, "base_model_hash"))
        s(self, "model_hash", _hash(self.model_hash, "model_hash"))
        s(self, "config_hash", _hash(self.config_hash, "config_hash"))
        s(self, "bucket_hashes", tuple(_hash(h, "each bucket hash") for h in self.bucket_hashes))
        s(self, "bucket_counts", tuple(_int(c, "each bucket count", minimum=1) for c in self.bucket_counts))
        if len(self.bucket_hashes) != len(self.bucket_counts):
            raise ValueError(
                f"{len(self.bucket_hashes)} bucket hashes but {len(self.bucket_counts)} bucket counts"
            )
        if not isinstance(self.rule, str) or not self.rule:
            raise ValueError("the aggregation rule name must be non-empty text")
        s(self, "rule_params", _json_obj(self.rule_params, "rule_params"))
        s(self, "extra", _json_obj(self.extra, "extra"))
        flagged = tuple(_int(i, "each flagged bucket index") for i in self.flagged)
        if list(flagged) != sorted(set(flagged)):
            raise ValueError("flagged bucket indices must be sorted and without repeats")
        if flagged and flagged[-1] >= len(self.bucket_hashes):
            raise ValueError(f"flagged bucket {flagged[-1]} does not exist")
        s(self, "flagged", flagged)
        committee = tuple(self.committee)
        if not all(isinstance(m, CommitteeMember) for m in committee):
            raise ValueError("committee must be a sequence of CommitteeMember")
        ids = [m.node_id for m in committee]
        if len(set(ids)) != len(ids):
            raise ValueError("a validator appears more than once on the committee")
        s(self, "committee", committee)
        q = _int(self.quorum, "quorum")
        s(self, "quorum", q)
        if r == 0:
            if (
                self.prev_hash != ZERO_HASH
                or self.base_model_hash != ZERO_HASH
                or committee
                or q != 0
                or self.bucket_hashes
            ):
                raise ValueError(
                    "the genesis header (round 0) must have zero prev and base hashes, no buckets, "
                    "no committee and quorum 0"
                )
        else:
            if not committee:
                raise ValueError(f"round {r} has no validator committee")
            if not self.bucket_hashes:
                raise ValueError(f"round {r} has no bucket sums")
            if not quorum_size(len(committee)) <= q <= len(committee):
                raise ValueError(
                    f"quorum {q} is unsafe for a committee of {len(committee)}: it must be between "
                    f"{quorum_size(len(committee))} and {len(committee)}"
                )

    @property
    def is_genesis(self) -> bool:
        return self.round == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (bytes as hex); this is also the canonical form that is hashed."""
        return {
            "version": 1,
            "round": self.round,
            "prev_hash": self.prev_hash.hex(),
            "base_model_hash": self.base_model_hash.hex(),
            "model_hash": self.model_hash.hex(),
            "bucket_hashes": [h.hex() for h in self.bucket_hashes],
            "bucket_counts": list(self.bucket_counts),
            "rule": self.rule,
            "rule_params": self.rule_params,
            "flagged": list(self.flagged),
            "committee": [m.to_dict() for m in self.committee],
            "quorum": self.quorum,
            "config_hash": self.config_hash.hex(),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockHeader:
        """Inverse of to_dict. Raises ValueError on anything malformed."""
        try:
            if d.get("version") != 1:
                raise ValueError(f"unsupported block header version {d.get('version')!r}")
            return cls(
                round=d["round"],
                prev_hash=_unhex(d["prev_hash"], "prev_hash"),
                base_model_hash=_unhex(d["base_model_hash"], "base_model_hash"),
                model_hash=_unhex(d["model_hash"], "model_hash"),
                bucket_hashes=tuple(_unhex(h, "bucket hash") for h in d["bucket_hashes"]),
                bucket_counts=tuple(d["bucket_counts"]),
                rule=d["rule"],
                rule_params=d["rule_params"],
                flagged=tuple(d["flagged"]),
                committee=tuple(CommitteeMember.from_dict(m) for m in d["committee"]),
                quorum=d["quorum"],
                config_hash=_unhex(d["config_hash"], "config_hash"),
                extra=d["extra"],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed block header: {exc!r}") from None

    def hash(self) -> bytes:
        return hash_json(BLOCK_DOMAIN, self.to_dict())

    def member(self, node_id: str) -> CommitteeMember | None:
        for m in self.committee:
            if m.node_id == node_id:
                return m
        return None


def genesis_header(initial_model: np.ndarray, extra: Mapping[str, Any] | None = None) -> BlockHeader:
    """The round-0 header for an initial global model."""
    return BlockHeader(
        round=0,
        prev_hash=ZERO_HASH,
        base_model_hash=ZERO_HASH,
        model_hash=hash_vector(model_vector(initial_model)),
        bucket_hashes=(),
        bucket_counts=(),
        rule=GENESIS_RULE,
        rule_params={},
        flagged=(),
        committee=(),
        quorum=0,
        config_hash=ZERO_HASH,
        extra=dict(extra or {}),
    )


def model_vector(model: np.ndarray) -> np.ndarray:
    arr = np.asarray(model, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"a model must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("the model contains NaN or infinite values")
    return arr


# ----------------------------------------------------------------------------------------------- votes


@dataclass(frozen=True)
class Vote:
    """A validator's signed verdict on one block header."""

    round: int
    block_hash: bytes
    validator_id: str
    accept: bool
    reason: str
    score: float | None
    signature: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "round", _int(self.round, "vote round"))
        object.__setattr__(self, "block_hash", _hash(self.block_hash, "vote block_hash"))
        if not isinstance(self.validator_id, str) or not self.validator_id:
            raise ValueError("a vote needs a non-empty validator id")
        if not isinstance(self.accept, bool):
            raise ValueError("a vote's accept flag must be True or False")
        if not isinstance(self.reason, str):
            raise ValueError("a vote's reason must be text")
        object.__setattr__(self, "score", _score(self.score))
        if not isinstance(self.signature, bytes | bytearray) or len(self.signature) != SIGNATURE_LEN:
            raise ValueError(f"a vote signature must be {SIGNATURE_LEN} bytes")
        object.__setattr__(self, "signature", bytes(self.signature))

    @staticmethod
    def signed_message(
        round: int, block_hash: bytes, validator_id: str, accept: bool, reason: str, score: float | None
    ) -> bytes:
        """The exact bytes a validator signs (domain-separated canonical JSON)."""
        body = {
            "round": _int(round, "vote round"),
            "block_hash": _hash(block_hash, "vote block_hash").hex(),
            "validator_id": validator_id,
            "accept": bool(accept),
            "reason": reason,
            "score": _score(score),
        }
        return VOTE_DOMAIN + b"\x00" + canonical_json(body)

    @classmethod
    def create(
        cls,
        key: SigningKey,
        round: int,
        block_hash: bytes,
        validator_id: str,
        accept: bool,
        reason: str = "",
        score: float | None = None,
    ) -> Vote:
        sig = key.sign(cls.signed_message(round, block_hash, validator_id, accept, reason, score))
        return cls(round, block_hash, validator_id, accept, reason, score, sig)

    def message(self) -> bytes:
        return self.signed_message(
            self.round, self.block_hash, self.validator_id, self.accept, self.reason, self.score
        )

    def verify(self, public_key: bytes) -> None:
        """Raise InvalidSignature unless this vote was signed by ``public_key``."""
        verify(public_key, self.message(), self.signature)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "block_hash": self.block_hash.hex(),
            "validator_id": self.validator_id,
            "accept": self.accept,
            "reason": self.reason,
            "score": self.score,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vote:
        try:
            return cls(
                round=d["round"],
                block_hash=_unhex(d["block_hash"], "vote block_hash"),
                validator_id=d["validator_id"],
                accept=d["accept"],
                reason=d["reason"],
                score=d["score"],
                signature=_unhex(d["signature"], "vote signature"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed vote: {exc!r}") from None


def _score(score: Any) -> float | None:
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, int | float | np.integer | np.floating):
        raise ValueError(f"a vote score must be a number or None, got {score!r}")
    value = float(score)
    if not math.isfinite(value):
        raise ValueError("a vote score must be finite")
    return value


# ---------------------------------------------------------------------------------------------- quorum


def _checked_accepts(header: BlockHeader, votes: Iterable[Vote], *, strict: bool) -> list[Vote]:
    """Valid accepting votes. strict: any bad vote is an error; otherwise bad votes are skipped."""
    r = header.round
    block_hash = header.hash()
    seen: set[str] = set()
    accepts: list[Vote] = []
    for v in votes:
        try:
            if not isinstance(v, Vote):
                raise LedgerError(f"expected a Vote, got {type(v).__name__}", r)
            member = header.member(v.validator_id)
            if member is None:
                raise LedgerError(f"vote from {v.validator_id!r}, who is not on the committee", r)
            if v.validator_id in seen:
                raise LedgerError(f"validator {v.validator_id!r} voted more than once", r)
            if v.round != r:
                raise LedgerError(f"vote from {v.validator_id!r} is for round {v.round}", r)
            if v.block_hash != block_hash:
                raise LedgerError(f"vote from {v.validator_id!r} is for a different block", r)
            try:
                v.verify(member.public_key)
            except InvalidSignature:
                raise LedgerError(f"vote from {v.validator_id!r} has an invalid signature", r) from None
        except LedgerError:
            if strict:
                raise
            continue
        seen.add(v.validator_id)
        if v.accept:
            accepts.append(v)
    return accepts


def check_quorum(header: BlockHeader, votes: Iterable[Vote]) -> None:
    """Raise LedgerError unless at least ``header.quorum`` distinct committee members validly accept it.

    Any vote from a non-member, a repeated voter, or with the wrong round, block hash or signature is an
    error. Correctly signed reject votes are allowed but do not count.
    """
    accepts = _checked_accepts(header, votes, strict=True)
    if len(accepts) < header.quorum:
        raise LedgerError(
            f"only {len(accepts)} validators accepted; {header.quorum} of {len(header.committee)} needed",
            header.round,
        )


def select_quorum(header: BlockHeader, votes: Iterable[Vote]) -> tuple[Vote, ...]:
    """For the leader: keep the valid accepting votes (sorted by validator id), dropping bad ones.

    A second vote from the same validator is dropped. Raises LedgerError if fewer than the quorum remain.
    """
    accepts = _checked_accepts(header, votes, strict=False)
    accepts.sort(key=lambda v: v.validator_id)
    if len(accepts) < header.quorum:
        raise LedgerError(
            f"only {len(accepts)} valid accepting votes; {header.quorum} of {len(header.committee)} needed",
            header.round,
        )
    return tuple(accepts)


# ----------------------------------------------------------------------------------------------- block


@dataclass(frozen=True)
class Block:
    """A header with its quorum certificate (accepting votes, at most one per committee member)."""

    header: BlockHeader
    votes: tuple[Vote, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.header, BlockHeader):
            raise ValueError("a block needs a BlockHeader")
        votes = tuple(self.votes)
        if not all(isinstance(v, Vote) for v in votes):
            raise ValueError("block votes must all be Vote objects")
        object.__setattr__(self, "votes", votes)

    @property
    def hash(self) -> bytes:
        return self.header.hash()

    @property
    def round(self) -> int:
        return self.header.round

    def to_dict(self) -> dict[str, Any]:
        return {"header": self.header.to_dict(), "votes": [v.to_dict() for v in self.votes]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Block:
        try:
            return cls(
                header=BlockHeader.from_dict(d["header"]),
                votes=tuple(Vote.from_dict(v) for v in d["votes"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed block: {exc!r}") from None
