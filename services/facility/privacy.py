"""A facility's differential privacy in a round: admission against its budget, DP-SGD, reporting.

The leader's DP plan arrives in ``TrainingPlan.dp`` (hfl.privacy.federation.DPPlan). For each
round attempt the facility

1. checks *before training* that ``steps_per_round`` more DP-SGD steps keep its ε within budget, and
   otherwise DECLINES the round (:class:`PrivacyDeclined`, a NotAllowed: the fog hears it at once);
2. on its first private round, publishes its sample count and class balance with Laplace noise (pure ε,
   set aside in the plan) for the dashboard;
3. trains with noise from a cryptographically seeded generator;
4. records the steps in its own state directory (fsync'd, so a restarted facility remembers its spend)
   *before* the update leaves the facility, and reports the running total to the authority, signed
   with its identity key.

The record and its accounting are hfl.privacy.facility (state file ``<state_dir>/privacy.json``); this
module is the wiring: the RPC to the authority and the metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

import grpc
import numpy as np

from hfl.errors import NotAllowed
from hfl.learning.data import Dataset
from hfl.privacy import secure_generator
from hfl.privacy.facility import Admission, FacilityPrivacy, PrivacyDeclined
from hfl.privacy.federation import dp_local_update
from hfl.privacy.report import SpendReport
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.rpc import serde
from hfl.rpc.client import call, describe_rpc_error
from hfl.rpc.metrics import EPSILON_SPENT, PRIVACY_EXHAUSTED, RELEASED_POSITIVE_FRACTION, RELEASED_SAMPLES
from hfl.rpc.server import Channels
from hfl.rpc.tls import AUTHORITY

log = logging.getLogger("hfl.facility")


def publish_metrics(book: FacilityPrivacy, exhausted: bool | None) -> None:
    """The facility's privacy metrics, after every change of its record."""
    EPSILON_SPENT.labels(facility=book.node_id).set(book.total_epsilon())
    if exhausted is not None:
        PRIVACY_EXHAUSTED.labels(facility=book.node_id).set(int(exhausted))
    rel = book.state.get("release")
    if rel:
        RELEASED_SAMPLES.labels(facility=book.node_id).set(rel["sample_count"])
        RELEASED_POSITIVE_FRACTION.labels(facility=book.node_id).set(rel["positive_fraction"])


async def send_report(channels: Channels, authority: str, report: SpendReport) -> None:
    """Report a spend to the authority; failures are logged (the facility's own record stays)."""
    stub = authority_pb2_grpc.AuthorityServiceStub(channels.get(authority, AUTHORITY))
    try:
        await call(
            stub.ReportPrivacySpend,
            authority_pb2.ReportPrivacySpendRequest(spend=serde.spend_to_proto(report)),
            peer="authority",
            timeout=30,
        )
    except grpc.aio.AioRpcError as e:
        log.warning(
            "could not report privacy spend for round %d to the authority: %s",
            report.round,
            describe_rpc_error(e),
        )


class PrivacyGate:
    """What the Facility servicer calls: admit a round, train privately, report the spend."""

    def __init__(self, facility: Any) -> None:
        self.facility = facility
        settings = facility.settings
        self.authority = settings.authority
        self.book = FacilityPrivacy(
            settings.state_dir,
            facility.node_id,
            facility.signing_key,
            local_budget=settings.dp_budget or 0.0,
            on_change=publish_metrics,
        )
        self._pending: dict[tuple[int, int], concurrent.futures.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def admit(self, config: Any, plan: Any) -> Admission | None:
        """None without DP; otherwise an Admission, or PrivacyDeclined (logged and reported) to decline."""
        dp = plan.dp
        if dp is None:
            return None
        self._loop = asyncio.get_running_loop()
        channels = self.facility.channels
        try:
            adm = await asyncio.to_thread(self.book.admit, dp, config.round, config.attempt)
        except PrivacyDeclined as e:
            log.warning("%s. This facility sends no update this round.", str(e)[0].upper() + str(e)[1:])
            report = await asyncio.to_thread(
                self.book.decline_report, dp, config.round, config.attempt, str(e)
            )
            await send_report(channels, self.authority, report)
            raise
        release = await asyncio.to_thread(
            self.book.release_statistics, dp, self.facility.data.train, config.round
        )
        if release is not None:
            await send_report(channels, self.authority, release)
        return adm

    def private_update(
        self, model: Any, params: np.ndarray, plan: Any, admission: Admission | None, data: Dataset
    ) -> np.ndarray:
        """DP-SGD for the admitted round (in a worker thread); the spend is recorded before returning."""
        if admission is None:
            raise NotAllowed(
                "the plan asks for differential privacy but this round was not admitted against "
                "the privacy budget; refusing to train"
            )

        delta = dp_local_update(
            model,
            params,
            data,
            admission.plan,
            lr=plan.lr,
            max_update_norm=plan.clip_update,
            rng=secure_generator(),
        )
        report = self.book.record(admission)
        log.info(
            "round %d: trained with differential privacy; ε spent so far %.3f%s",
            admission.round,
            self.book.total_epsilon(),
            " (budget reached: no further rounds)" if report.exhausted else "",
        )
        if self._loop is not None:
            fut = asyncio.run_coroutine_threadsafe(
                send_report(self.facility.channels, self.authority, report), self._loop
            )
            self._pending[(admission.round, admission.attempt)] = fut
        return delta

    async def flush(self, round_: int, attempt: int) -> None:
        """Wait until the round's spend report has gone to the authority (before the update leaves)."""
        fut = self._pending.pop((round_, attempt), None)
        if fut is not None:
            await asyncio.wrap_future(fut)
