"""A fog that misbehaves on purpose, for experiments and tests only (HFL_BYZANTINE=swap_keys on a fog;
FogSettings allows it for fogs only). The honest fog (service.py, secure.py) has no code for it:
``fog_class`` picks FaultyFog only when the fault is set.

``swap_keys``: in secure aggregation the fog substitutes one member's masking key in the advertisements
it forwards, the attack signed advertisements exist to stop (every facility then refuses the bucket).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from typing_extensions import override  # mypy checks that each overridden fog method still exists

from hfl.crypto import kex
from hfl.domain import RoundConfig
from hfl.rpc.client import ByteCount
from hfl.rpc.settings import FogSettings
from hfl.secagg import KeyAdvertisement
from services.fog.rounds import BucketRequest, PhaseMarks
from services.fog.secure import FacilityMemberLink
from services.fog.service import Fog

log = logging.getLogger("hfl.fog")


class KeySwappingMemberLink(FacilityMemberLink):
    """Forwards the members' advertisements with the first member's masking key replaced by a fresh one."""

    _swapped: tuple[Sequence[KeyAdvertisement], list[KeyAdvertisement]] | None = None

    @override
    def _share_keys_request(self, ads: Sequence[KeyAdvertisement]) -> bytes:
        if not ads:
            return super()._share_keys_request(ads)
        if self._swapped is None or self._swapped[0] is not ads:  # once per stage, like the honest link
            victim = ads[0].sender
            log.warning("FAULTY FOG (experiment): substituting the masking key of %s", victim)
            fake = kex.generate_keypair().public
            self._swapped = (ads, [replace(a, s_pk=fake) if a.sender == victim else a for a in ads])
        return super()._share_keys_request(self._swapped[1])


class FaultyFog(Fog):
    """A fog with the fault of hfl.rpc.settings.FOG_FAULTS (only ``swap_keys``)."""

    @override
    def member_link(
        self,
        config: RoundConfig,
        request: BucketRequest,
        bucket_id: str,
        counter: ByteCount,
        d: int,
        marks: PhaseMarks,
    ) -> FacilityMemberLink:
        return KeySwappingMemberLink(config, request, bucket_id, self.links, counter, d, marks=marks)


def fog_class(settings: FogSettings) -> type[Fog]:
    """The fog a process runs: the honest one unless a fault is set for an experiment."""
    if settings.byzantine == "swap_keys":
        log.warning("this fog is FAULTY for experiments: %r", settings.byzantine)
        return FaultyFog
    return Fog
