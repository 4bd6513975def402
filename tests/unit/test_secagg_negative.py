"""Secure aggregation refusals: tampering, key substitution, replays, wrong stage, duplicates, bad inputs,
and an aggregator that lies about who dropped."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hfl.crypto import kex
from hfl.crypto.signing import SigningKey
from hfl.secagg import (
    AggregatorStage,
    BucketAbandoned,
    BucketAggregator,
    DuplicateMessageError,
    InconsistentUnmaskRequestError,
    InvalidInputError,
    InvalidMessageError,
    KeyAdvertisement,
    KeySubstitutionError,
    MaskedInput,
    MemberStage,
    QuantConfig,
    ReconstructionError,
    SecAggConfigError,
    SecAggError,
    SecAggMember,
    ShareDecryptionError,
    StageError,
    UnknownMemberError,
    UnmaskResponse,
    WrongBucketError,
    WrongRoundError,
)
from hfl.secagg.protocol import advertisement_payload

G, T, D = 5, 4, 8
CFG = QuantConfig(clip=1.0, max_members=G)
IDS = [f"fac-{i}" for i in range(G)]
X = {m: np.full(D, (i + 1) / 8) for i, m in enumerate(IDS)}


class Bucket:
    """Members and aggregator of one bucket, advanced stage by stage in memory."""

    def __init__(
        self, round: int = 3, bucket: str = "b-1", keys: dict[str, SigningKey] | None = None
    ) -> None:
        self.keys = keys or {m: SigningKey.generate() for m in IDS}
        identities = {m: self.keys[m].public_bytes for m in IDS}
        self.members = {m: SecAggMember(m, round, bucket, identities, self.keys[m], T, CFG, D) for m in IDS}
        self.agg = BucketAggregator(round, bucket, IDS, T, CFG, D)
        self.ads: list[KeyAdvertisement] = []
        self.masked: dict[str, MaskedInput] = {}

    def advertise(self) -> list[KeyAdvertisement]:
        for m in IDS:
            self.agg.add_advertisement(self.members[m].advertise())
        self.agg.close_stage()
        self.ads = self.agg.advertisements()
        return self.ads

    def share(self) -> None:
        self.advertise()
        for m in IDS:
            self.agg.add_shares(self.members[m].share_keys(self.ads))
        self.agg.close_stage()

    def mask(self, skip: tuple[str, ...] = ()) -> None:
        self.share()
        for m in IDS:
            if m not in skip:
                self.masked[m] = self.members[m].masked_input(self.agg.shares_for(m), X[m])
                self.agg.add_masked_input(self.masked[m])
        self.agg.close_stage()


# Tampering and key substitution ---------------------------------------------------------------------
def test_tampered_ciphertext_is_refused_and_the_member_aborts() -> None:
    b = Bucket()
    b.share()
    shares = b.agg.shares_for("fac-0")
    blob = bytearray(shares[1].ciphertext)
    blob[20] ^= 0x40
    shares[1] = dataclasses.replace(shares[1], ciphertext=bytes(blob))
    with pytest.raises(ShareDecryptionError, match="fac-2"):
        b.members["fac-0"].masked_input(shares, X["fac-0"])
    assert b.members["fac-0"].stage is MemberStage.ABORTED
    with pytest.raises(StageError, match="aborted"):
        b.members["fac-0"].masked_input(b.agg.shares_for("fac-0"), X["fac-0"])


def test_misrouted_share_is_refused_even_if_the_recipient_field_is_rewritten() -> None:
    b = Bucket()
    b.share()
    for_1 = b.agg.shares_for("fac-1")
    wrong = b.agg.shares_for("fac-0")
    wrong[0] = for_1[0]  # a share addressed to fac-1, delivered to fac-0
    with pytest.raises(InvalidMessageError, match="addressed to 'fac-1'"):
        b.members["fac-0"].masked_input(wrong, X["fac-0"])
    b2 = Bucket()
    b2.share()
    from_2_to_1 = next(s for s in b2.agg.shares_for("fac-1") if s.sender == "fac-2")
    shares = [s for s in b2.agg.shares_for("fac-0") if s.sender != "fac-2"]
    shares.append(dataclasses.replace(from_2_to_1, recipient="fac-0"))
    with pytest.raises(ShareDecryptionError):
        b2.members["fac-0"].masked_input(shares, X["fac-0"])


def test_substituted_key_is_detected() -> None:
    b = Bucket()
    ads = b.advertise()
    fog_keys = kex.generate_keypair()
    swapped = [dataclasses.replace(a, c_pk=fog_keys.public) if a.sender == "fac-3" else a for a in ads]
    with pytest.raises(KeySubstitutionError, match="fac-3"):
        b.members["fac-0"].share_keys(swapped)
    assert b.members["fac-0"].stage is MemberStage.ABORTED


def test_advertisement_signed_by_another_key_is_detected() -> None:
    b = Bucket()
    ads = b.advertise()
    fog = SigningKey.generate()
    forged = []
    for a in ads:
        if a.sender == "fac-4":
            c, s = kex.generate_keypair(), kex.generate_keypair()
            payload = advertisement_payload(a.round, a.bucket, a.sender, c.public, s.public)
            a = dataclasses.replace(a, c_pk=c.public, s_pk=s.public, signature=fog.sign(payload))
        forged.append(a)
    with pytest.raises(KeySubstitutionError, match="fac-4"):
        b.members["fac-1"].share_keys(forged)


def test_own_advertisement_missing_or_altered_is_detected() -> None:
    b = Bucket()
    ads = b.advertise()
    with pytest.raises(KeySubstitutionError, match="missing"):
        b.members["fac-0"].share_keys([a for a in ads if a.sender != "fac-0"])
    b = Bucket()
    ads = b.advertise()
    other = kex.generate_keypair().public
    with pytest.raises(KeySubstitutionError, match="altered"):
        b.members["fac-0"].share_keys(
            [dataclasses.replace(a, s_pk=other) if a.sender == "fac-0" else a for a in ads]
        )


# Replays and wrong bucket ---------------------------------------------------------------------------
def test_replayed_messages_from_an_earlier_round_are_refused() -> None:
    keys = {m: SigningKey.generate() for m in IDS}  # same identities in both rounds
    old = Bucket(round=3, keys=keys)
    old.mask()
    new = Bucket(round=4, keys=keys)
    new_ads = new.advertise()
    with pytest.raises(WrongRoundError, match="round 3"):
        new.members["fac-0"].share_keys([*new_ads[:-1], old.ads[-1]])
    # re-labelling the old advertisement with the new round breaks its signature
    new = Bucket(round=4, keys=keys)
    new_ads = new.advertise()
    relabelled = dataclasses.replace(old.ads[-1], round=4)
    with pytest.raises(KeySubstitutionError, match=old.ads[-1].sender):
        new.members["fac-0"].share_keys([*new_ads[:-1], relabelled])
    with pytest.raises(WrongRoundError):
        BucketAggregator(4, "b-1", IDS, T, CFG, D).add_advertisement(old.ads[0])
    new = Bucket(round=4, keys=keys)
    new.share()
    with pytest.raises(WrongRoundError):
        new.agg.add_masked_input(old.masked["fac-0"])
    old_shares = [dataclasses.replace(s, round=3) for s in new.agg.shares_for("fac-0")]
    with pytest.raises(WrongRoundError):
        new.members["fac-0"].masked_input(old_shares, X["fac-0"])


def test_messages_for_another_bucket_are_refused() -> None:
    a, b = Bucket(bucket="b-1"), Bucket(bucket="b-2")
    a.advertise()
    with pytest.raises(WrongBucketError, match="b-1"):
        b.agg.add_advertisement(a.ads[0])


# Wrong stage and duplicates ---------------------------------------------------------------------------
def test_out_of_order_steps_are_refused() -> None:
    b = Bucket()
    with pytest.raises(StageError, match="share_keys"):
        b.members["fac-0"].share_keys([])
    with pytest.raises(StageError, match="masked_input"):
        b.members["fac-0"].masked_input([], X["fac-0"])
    with pytest.raises(StageError, match="unmask"):
        b.members["fac-0"].unmask(IDS, [])
    assert b.members["fac-0"].stage is MemberStage.NEW  # a refused call in the wrong stage changes nothing
    b.members["fac-0"].advertise()
    with pytest.raises(StageError, match="advertise"):
        b.members["fac-0"].advertise()
    with pytest.raises(StageError):
        b.agg.add_masked_input(MaskedInput(3, "b-1", "fac-0", np.zeros(D, dtype=np.uint32)))
    with pytest.raises(StageError):
        b.agg.shares_for("fac-0")
    with pytest.raises(StageError):
        b.agg.advertisements()
    with pytest.raises(StageError):
        b.agg.result()


def test_message_for_the_wrong_stage_at_the_aggregator() -> None:
    b = Bucket()
    b.share()
    late_ad = b.ads[0]
    with pytest.raises(StageError, match="advertisement"):
        b.agg.add_advertisement(late_ad)


def test_duplicates_are_refused() -> None:
    b = Bucket()
    ad = b.members["fac-0"].advertise()
    b.agg.add_advertisement(ad)
    with pytest.raises(DuplicateMessageError, match="fac-0"):
        b.agg.add_advertisement(ad)
    b = Bucket()
    ads = b.advertise()
    with pytest.raises(DuplicateMessageError, match="fac-1"):
        b.members["fac-0"].share_keys([*ads, ads[1]])
    b = Bucket()
    b.share()
    shares = b.agg.shares_for("fac-0")
    with pytest.raises(DuplicateMessageError):
        b.members["fac-0"].masked_input([*shares, shares[0]], X["fac-0"])
    b = Bucket()
    b.mask()
    with pytest.raises(StageError):  # stage closed: a late duplicate is refused as out of stage
        b.agg.add_masked_input(b.masked["fac-0"])
    b = Bucket()
    b.share()
    m = b.members["fac-0"].masked_input(b.agg.shares_for("fac-0"), X["fac-0"])
    b.agg.add_masked_input(m)
    with pytest.raises(DuplicateMessageError):
        b.agg.add_masked_input(m)
    b = Bucket()
    b.mask()
    req = b.agg.unmask_request()
    resp = b.members["fac-0"].unmask(req.survivors, req.dropped)
    b.agg.add_unmask_response(resp)
    with pytest.raises(DuplicateMessageError):
        b.agg.add_unmask_response(resp)
    with pytest.raises(StageError):
        b.members["fac-0"].unmask(req.survivors, req.dropped)


def test_share_batches_must_cover_exactly_the_advertised_members() -> None:
    b = Bucket()
    ads = b.advertise()
    shares = b.members["fac-0"].share_keys(ads)
    with pytest.raises(InvalidMessageError, match="one share to each"):
        b.agg.add_shares(shares[:-1])
    with pytest.raises(DuplicateMessageError):
        b.agg.add_shares([*shares, shares[0]])
    with pytest.raises(InvalidMessageError, match="one sender"):
        b.agg.add_shares([*shares[:-1], dataclasses.replace(shares[-1], sender="fac-1")])
    b.agg.add_shares(shares)
    with pytest.raises(DuplicateMessageError):
        b.agg.add_shares(shares)


# Inputs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros(D + 1), "length"),
        (np.zeros((D, 1)), "length"),
        (np.full(D, np.nan), "NaN"),
        (np.full(D, 1.5), "clipping"),
    ],
)
def test_bad_local_update_is_refused(x: np.ndarray, match: str) -> None:
    b = Bucket()
    b.share()
    with pytest.raises(InvalidInputError, match=match):
        b.members["fac-0"].masked_input(b.agg.shares_for("fac-0"), x)


def test_aggregator_refuses_masked_input_of_the_wrong_length_or_type() -> None:
    b = Bucket()
    b.share()
    with pytest.raises(InvalidInputError, match="length"):
        b.agg.add_masked_input(MaskedInput(3, "b-1", "fac-0", np.zeros(D + 1, dtype=np.uint32)))
    with pytest.raises(InvalidInputError, match="uint32"):
        b.agg.add_masked_input(MaskedInput(3, "b-1", "fac-0", np.zeros(D)))
    with pytest.raises(UnknownMemberError):
        b.agg.add_masked_input(MaskedInput(3, "b-1", "intruder", np.zeros(D, dtype=np.uint32)))


# A lying aggregator -----------------------------------------------------------------------------------
def test_member_listed_as_both_survivor_and_dropped_is_refused() -> None:
    b = Bucket()
    b.mask(skip=("fac-4",))
    member = b.members["fac-0"]
    with pytest.raises(InconsistentUnmaskRequestError, match="both"):
        member.unmask(["fac-0", "fac-1", "fac-2", "fac-3"], ["fac-3", "fac-4"])
    assert member.stage is MemberStage.ABORTED


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        (["fac-0", "fac-1", "fac-2"], ["fac-4"], "at least"),  # too few survivors to release a sum
        (["fac-0", "fac-1", "fac-2", "fac-3", "ghost"], ["fac-4"], "did not share keys"),
        (["fac-1", "fac-2", "fac-3", "fac-4"], ["fac-0"], "sent its masked input"),
        (["fac-0", "fac-0", "fac-1", "fac-2"], [], "twice"),
    ],
)
def test_other_inconsistent_unmask_requests_are_refused(
    survivors: list[str], dropped: list[str], match: str
) -> None:
    b = Bucket()
    b.mask(skip=("fac-4",))
    with pytest.raises(InconsistentUnmaskRequestError, match=match):
        b.members["fac-0"].unmask(survivors, dropped)


def test_corrupted_unmask_share_is_detected() -> None:
    b = Bucket()
    b.mask()
    req = b.agg.unmask_request()
    for m in IDS:
        resp = b.members[m].unmask(req.survivors, req.dropped)
        if m == "fac-2":
            owner, raw = resp.b_shares[0]
            bad = raw[:-1] + bytes([raw[-1] ^ 1])
            resp = dataclasses.replace(resp, b_shares=((owner, bad), *resp.b_shares[1:]))
        b.agg.add_unmask_response(resp)
    b.agg.close_stage()
    with pytest.raises(ReconstructionError, match="inconsistent"):
        b.agg.result()


def test_unmask_response_must_answer_the_request() -> None:
    b = Bucket()
    b.mask(skip=("fac-4",))
    req = b.agg.unmask_request()
    resp = b.members["fac-0"].unmask(req.survivors, req.dropped)
    with pytest.raises(InvalidMessageError, match="does not answer"):
        b.agg.add_unmask_response(UnmaskResponse(resp.round, resp.bucket, resp.sender, resp.b_shares, ()))


# Dropouts, abandonment and configuration ---------------------------------------------------------------
def test_marked_dropped_member_is_ignored_and_too_many_drops_abandon() -> None:
    b = Bucket()
    ad = b.members["fac-0"].advertise()
    b.agg.add_advertisement(ad)
    b.agg.mark_dropped("fac-0")
    assert "fac-0" not in b.agg.alive
    with pytest.raises(UnknownMemberError):
        b.agg.add_advertisement(ad)
    with pytest.raises(BucketAbandoned, match="needed"):
        b.agg.mark_dropped("fac-1")
    assert b.agg.stage is AggregatorStage.ABANDONED
    with pytest.raises(StageError, match="abandoned"):
        b.agg.add_advertisement(b.members["fac-2"].advertise())


def test_member_refuses_to_continue_with_too_few_advertisements() -> None:
    b = Bucket()
    ads = b.advertise()
    with pytest.raises(BucketAbandoned, match="at least 4"):
        b.members["fac-0"].share_keys(ads[:3])


def test_configuration_is_validated() -> None:
    keys = {m: SigningKey.generate() for m in IDS}
    ids = {m: keys[m].public_bytes for m in IDS}
    with pytest.raises(SecAggConfigError, match="at least 3"):
        BucketAggregator(1, "b", IDS[:2], 2, CFG, D)
    with pytest.raises(SecAggConfigError, match="two thirds"):
        BucketAggregator(1, "b", IDS, 3, CFG, D)
    with pytest.raises(SecAggConfigError, match="two thirds"):
        BucketAggregator(1, "b", IDS, 6, CFG, D)
    with pytest.raises(SecAggConfigError, match="overflow"):
        BucketAggregator(1, "b", IDS, T, QuantConfig(1.0, 4), D)
    with pytest.raises(SecAggConfigError, match="unique"):
        BucketAggregator(1, "b", [*IDS, "fac-0"], T, CFG, D)
    with pytest.raises(SecAggConfigError, match="does not match"):
        SecAggMember("fac-0", 1, "b", ids, keys["fac-1"], T, CFG, D)
    with pytest.raises(SecAggConfigError, match="not in the member list"):
        SecAggMember("ghost", 1, "b", ids, keys["fac-1"], T, CFG, D)
    with pytest.raises(SecAggConfigError, match="round"):
        SecAggMember("fac-0", -1, "b", ids, keys["fac-0"], T, CFG, D)
    with pytest.raises(SecAggConfigError, match="vector length"):
        SecAggMember("fac-0", 1, "b", ids, keys["fac-0"], T, CFG, 0)
    assert issubclass(SecAggConfigError, SecAggError)


def test_signed_but_unusable_keys_from_a_member_are_refused() -> None:
    b = Bucket()
    ads = b.advertise()
    bad_key = bytes(32)  # a low-order point: agreement with it gives an all-zero secret
    signer = b.keys["fac-4"]
    forged = []
    for a in ads:
        if a.sender == "fac-4":
            payload = advertisement_payload(a.round, a.bucket, a.sender, a.c_pk, bad_key)
            a = dataclasses.replace(a, s_pk=bad_key, signature=signer.sign(payload))
        forged.append(a)
    shares = {m: b.members[m].share_keys(ads if m == "fac-4" else forged) for m in IDS}
    for m in IDS:
        b.agg.add_shares(shares[m])
    b.agg.close_stage()
    with pytest.raises(InvalidMessageError, match="unusable masking key"):
        b.members["fac-0"].masked_input(b.agg.shares_for("fac-0"), X["fac-0"])
    b2 = Bucket()
    ads = b2.advertise()
    payload = advertisement_payload(ads[4].round, ads[4].bucket, "fac-4", bad_key, ads[4].s_pk)
    forged_c = [*ads[:4], dataclasses.replace(ads[4], c_pk=bad_key, signature=b2.keys["fac-4"].sign(payload))]
    with pytest.raises(InvalidMessageError, match="unusable encryption key"):
        b2.members["fac-0"].share_keys(forged_c)


def test_a_member_whose_masked_input_came_is_a_survivor_and_cannot_be_dropped() -> None:
    """Masked inputs are summed on arrival (one vector per bucket): once in, a member stays in."""
    b = Bucket()
    b.share()
    for m in IDS[:-1]:
        b.agg.add_masked_input(b.members[m].masked_input(b.agg.shares_for(m), X[m]))
    with pytest.raises(StageError, match="already sent its masked input"):
        b.agg.mark_dropped(IDS[0])
    b.agg.mark_dropped(IDS[-1])  # the one that sent nothing can be
    assert IDS[0] in b.agg.alive and IDS[-1] not in b.agg.alive
