"""`hfl serve leader`."""

from __future__ import annotations

import asyncio
import logging

from hfl.domain import ModelSpec, TrainingPlan
from hfl.errors import ConfigError
from hfl.files import private_db
from hfl.learning.features import n_features_for
from hfl.learning.models import make_model
from hfl.learning.train import train_config
from hfl.ledger import LedgerError, LedgerStore
from hfl.proto.v1 import leader_pb2_grpc
from hfl.robust.bound import BOUND_MULTIPLIER, WINDOW_ROUNDS, norm_floor
from hfl.rpc.enrolment import pinned_authority_key
from hfl.rpc.metrics import LAST_COMMIT, ROUND, ROUND_INTERVAL
from hfl.rpc.node import load_identity, register
from hfl.rpc.server import Channels, serve_until_stopped, start_server
from hfl.rpc.settings import LeaderSettings
from services.leader.privacy import dp_plan_from_settings
from services.leader.service import Leader

log = logging.getLogger("hfl.leader")


def training_plan(settings: LeaderSettings) -> TrainingPlan:
    train = train_config(settings.lr, settings.epochs, settings.batch_size)
    return TrainingPlan(
        lr=train.lr,
        epochs=train.epochs,
        batch_size=train.batch_size,
        clip_update=settings.norm_ceiling,
        secure=settings.secagg,
        timeout_s=settings.round_timeout,
        dp=dp_plan_from_settings(settings),  # differential privacy plan, calibrated here (privacy.py)
    )


def open_ledger(settings: LeaderSettings) -> tuple[LedgerStore, ModelSpec]:
    n_features = settings.n_features
    if n_features is None:  # HFL_N_FEATURES unset: as many as the dataset gives
        n_features = n_features_for(settings.dataset, settings.label)
    spec = ModelSpec(kind=settings.model, n_features=n_features, hidden=settings.hidden)
    store = LedgerStore(private_db(settings.state_dir / "ledger.db"))
    initial = make_model(spec.kind, spec.n_features, spec.hidden).init_params(settings.seed)
    extra = {
        "model": {"kind": spec.kind, "n_features": spec.n_features, "hidden": spec.hidden},
        "seed": settings.seed,
    }
    try:
        store.init_genesis(initial, extra=extra)
    except LedgerError as e:
        store.close()
        raise ConfigError(
            f"the ledger in {settings.state_dir} was made for another model or seed ({e}); "
            "use a new state directory"
        ) from None
    return store, spec


def _log_norm_bound(leader: Leader, settings: LeaderSettings) -> None:
    """Say at start how updates are bounded (hfl/robust/bound.py)."""
    if leader.adaptive_bound:
        log.info(
            "norm bound: adaptive, %g x the median honest update length of the last %d rounds, between "
            "%g and %g (HFL_CLIP_UPDATE)",
            BOUND_MULTIPLIER,
            WINDOW_ROUNDS,
            norm_floor(settings.norm_ceiling),
            settings.norm_ceiling,
        )
    elif settings.defences:
        log.info("norm bound: fixed at %g (HFL_CLIP_UPDATE; HFL_ADAPTIVE_BOUND=false)", settings.norm_ceiling)


async def run(settings: LeaderSettings) -> None:
    node_id = settings.resolved_node_id()
    key = load_identity(settings.state_dir)
    store, spec = open_ledger(settings)
    head = store.head()
    if head is not None and head.header.round > 0:
        log.info("resuming after round %d (head %s)", head.header.round, head.hash.hex()[:16])
        ROUND.set(head.header.round)
    LAST_COMMIT.set_to_current_time()  # "no commit since" counts from the start
    channels = Channels()
    leader = Leader(settings, channels, store, spec, training_plan(settings))
    _log_norm_bound(leader, settings)
    ROUND_INTERVAL.set(leader.oplog.control().interval(settings.round_interval))  # an operator's choice stays
    running = await start_server(
        settings, "leader", lambda s: leader_pb2_grpc.add_LeaderServiceServicer_to_server(leader, s)
    )
    node = running.node_info(settings, "leader", node_id, key.public_bytes)
    answer = await register(channels, settings.authority, node, pinned_key=pinned_authority_key(settings))
    leader.authority_key = bytes(answer.authority_public_key)
    dp = leader.plan.dp
    await running.mark_ready(settings, "leader", node_id, dp=dp.to_dict() if dp else None)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(leader.run(stop))
    try:
        await serve_until_stopped(running, "leader")
    finally:
        stop.set()
        loop_task.cancel()
        try:
            await loop_task
        except (asyncio.CancelledError, Exception):
            pass
        await channels.close()
        store.close()
