"""What a fog reports for one bucket (sans-I/O): the bookkeeping of a plain bucket (who answered, who
declined, who sent something unusable, who never answered, what is summed) and the shape of an abandoned
bucket's result. The fog's servicer (services/fog) makes the calls and keeps the time; it feeds what it
hears into a PlainTally and reports the BucketResult this module makes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from hfl.domain import Bucket, BucketResult
from hfl.errors import AlreadyDone, NotAllowed


def abandoned(
    bucket: Bucket,
    dropped: tuple[str, ...],
    reason: str,
    *,
    refused: Iterable[str] = (),
    unreachable: Iterable[str] = (),
) -> BucketResult:
    """The result of a bucket that releases no sum this round: ``dropped`` are the members not in a sum
    (in the order given), ``refused`` and ``unreachable`` are reported sorted."""
    return BucketResult(
        bucket.bucket_id,
        bucket.fog_id,
        np.zeros(0),
        0,
        (),
        dropped,
        abandoned=True,
        reason=reason,
        refused=tuple(sorted(refused)),
        unreachable=tuple(sorted(unreachable)),
    )


@dataclass
class PlainTally:
    """The plain (--no-secagg) updates of one bucket, and what is known of the members that sent none."""

    bucket: Bucket
    dim: int
    updates: dict[str, np.ndarray] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # sent a malformed update: missing, and evidence
    # Members that said no at StartRound (e.g. out of privacy budget): nothing to wait for, no evidence.
    declined: set[str] = field(default_factory=set)
    # Members that did not answer StartRound at all (down, cut off, gone): nothing to wait for either.
    unreachable: set[str] = field(default_factory=set)

    def _silent_ones(self) -> set[str]:
        return self.refused | self.declined | self.unreachable

    def stragglers(self) -> list[str]:
        """Members not heard from at all (still expected)."""
        silent = self._silent_ones()
        return [m for m in self.bucket.members if m not in self.updates and m not in silent]

    def all_heard(self) -> bool:
        """Every member has sent its update or will send none: nothing left to wait for."""
        return len(self.updates) + len(self._silent_ones()) >= len(self.bucket.members)

    def _silent(self, node_id: str, into: set[str]) -> bool:
        if node_id in self.bucket.members and node_id not in self.updates:
            into.add(node_id)
            return True
        return False

    def lost(self, node_id: str) -> bool:
        """A member did not answer at all: do not wait for its update, and tell the leader. False when
        this changes nothing (not a member, or its update is already here)."""
        return self._silent(node_id, self.unreachable)

    def decline(self, node_id: str) -> bool:
        """A member refused to start this round: do not wait for its update (False: changes nothing)."""
        return self._silent(node_id, self.declined)

    def refuse(self, node_id: str) -> bool:
        """A member sent a malformed update: it counts as missing, and as evidence against it (False:
        changes nothing)."""
        return self._silent(node_id, self.refused)

    def add(self, node_id: str, update: np.ndarray) -> None:
        """A member's update (kept as given; summed in float64 by ``result``)."""
        if node_id not in self.bucket.members:
            raise NotAllowed(f"{node_id} is not a member of bucket {self.bucket.bucket_id}")
        if node_id in self.updates:
            raise AlreadyDone(f"{node_id} already sent its update for bucket {self.bucket.bucket_id}")
        self.updates[node_id] = update
        self.refused.discard(node_id)
        self.unreachable.discard(node_id)  # slow to answer StartRound, but it did send its update

    def result(self) -> BucketResult:
        """The bucket's sum of the updates received and who is missing from it (abandoned if none came)."""
        members = tuple(m for m in self.bucket.members if m in self.updates)
        dropped = tuple(m for m in self.bucket.members if m not in self.updates)
        if not members:
            return abandoned(
                self.bucket,
                dropped,
                "no member sent an update",
                refused=self.refused,
                unreachable=self.unreachable,
            )
        total = np.zeros(self.dim)
        for m in members:  # in the bucket's order, so the float sum is the same however they arrived
            np.add(total, self.updates[m], out=total)
        return BucketResult(
            self.bucket.bucket_id,
            self.bucket.fog_id,
            total,
            len(members),
            members,
            dropped,
            refused=tuple(sorted(self.refused)),
            unreachable=tuple(sorted(self.unreachable)),
        )
