"""Service configuration from HFL_* environment variables (pydantic-settings).

One class per role (AuthoritySettings, LeaderSettings, FogSettings, FacilitySettings, ValidatorSettings)
holds what that role reads: NodeSettings (every role), the mixins several roles share (DataSettings,
RuleSettings, DefenceSettings, SecureAggregationSettings, PrivacySettings) and the role's own fields.
``load_settings(role=...)`` builds the role's class, so a service typed with it can only read its own
settings (mypy checks), and a setting that cannot work is refused when the object is built, in one plain
line naming the variable (`hfl demo` builds the same objects before it starts anything). Settings holds
every field, for tools and tests that build settings without a role.
"""

from __future__ import annotations

import math
import re
import socket
from pathlib import Path
from typing import Any, Literal, get_args, overload

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hfl.domain import SPECIALTIES
from hfl.errors import ConfigError
from hfl.learning.data import SOURCES
from hfl.learning.models import ModelKind
from hfl.ledger.block import committee_size_for, max_faulty
from hfl.privacy.dpsgd import AccountantKind, Mechanism, check_supported
from hfl.robust.attacks import AttackName
from hfl.robust.reputation import QuarantineTest, ReputationError, federation_test
from hfl.robust.rules import RULES, RuleName
from hfl.robust.sizing import DEFAULT_BUCKET_SIZE, SizingError, size_federation
from hfl.schedule import MIN_SECURE_BUCKET

Role = Literal["authority", "leader", "fog", "facility", "validator"]

# "stall": accepts every round and never sends its update (masked input), to show that one site cannot
# hold up the others (hfl/deadline.py).
FacilityAttack = Literal[AttackName, "stall"]
FACILITY_ATTACKS: tuple[str, ...] = get_args(FacilityAttack)
STALL = "stall"
ValidatorFault = Literal["none", "reject_all", "accept_all", "silent"]
VALIDATOR_FAULTS: tuple[str, ...] = get_args(ValidatorFault)
# Experiments/tests only: a fog that swaps one member's key advertisement (secure aggregation must abort).
FogFault = Literal["none", "swap_keys"]
FOG_FAULTS: tuple[str, ...] = get_args(FogFault)

# Before these settings had None for "not set", a number stood for it. Values people already write
# (deploy/*.yml, docs/configuration.md) keep working: each of these still means "not set".
UNSET_NUMBERS: dict[str, float] = {
    "lr": 0,
    "epochs": 0,
    "batch_size": 0,
    "n_features": 0,
    "clip_update": 0,
    "f": -1,
    "dp_epsilon": 0,
    "dp_rounds": 0,
    "dp_clip": 0,
    "dp_sampling_rate": 0,
    "dp_local_epochs": 0,
    "dp_release_epsilon": -1,
    "dp_budget": 0,
}


def _more_than_zero(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be more than 0, or left unset for the built-in value; got {value!r}")


def _check_fault(v: Any, allowed: tuple[str, ...], role: str) -> Any:
    if v not in allowed:
        raise ValueError(f"{v!r} is not valid for a {role}; choose one of {', '.join(allowed)}")
    return v


# ------------------------------------------------------------------------------------ every role
class NodeSettings(BaseSettings):
    """What every service reads: who it is, where it listens, how it reaches the authority, transport
    security and rate limits. Each field is HFL_<NAME>; each role's class adds what that role reads."""

    model_config = SettingsConfigDict(env_prefix="HFL_", extra="ignore", case_sensitive=False)

    role: Role | None = None
    node_id: str = ""
    listen: str = "0.0.0.0:50051"
    advertise_host: str = Field(default="", description="host others use to reach this node; default: own IP")
    authority: str = "authority:50051"
    metrics_port: int = 9100
    state_dir: Path = Path("/var/lib/hfl")
    ready_file: str = ""
    log_level: str = "INFO"
    seed: int = 0  # seed of the initial model and of simulated data

    # fog and facility: the region a fog serves or a facility belongs to; the authority homes a facility
    # at a fog of its own region when one is up ("" = no region: any fog)
    region: str = ""

    # transport security (hfl/rpc/tls.py, enrolment.py, authz.py); HFL_TLS=false only for debugging
    tls: bool = True
    # the federation's root certificate (PEM file); the authority writes it to <state>/ca/ca.pem
    tls_ca: str = ""
    tls_hosts: str = ""  # extra host names or IPs for this node's certificate, comma-separated
    enrol_token: str = ""  # one-time enrolment token (needed only until the node holds a certificate)
    enrol_token_file: str = ""  # or a file holding it (compose: written by `hfl provision`)
    enrol: str = ""  # the authority's enrolment address; default: the authority's host, port 50052
    enrol_listen: str = "0.0.0.0:50052"  # authority: where enrolment (TLS, no client certificate) listens
    # authority: a folder holding the certificate authority and keys `hfl provision` made elsewhere (Docker
    # secrets, deploy/central/stack.yml): ca.pem, ca.key, identity.key, enrol_tokens.json. Copied into the
    # state folder on the first start; later starts only check that the state holds the same root. Read
    # by every role so that a node given it by mistake says so.
    ca_from: str = ""
    cert_hours: float = 24.0  # lifetime of node certificates; renewed when a third is left
    crl_refresh_s: float = 30.0  # how often servers fetch the revocation list
    enrol_rate: float = 0.5  # enrolment requests per second per peer address (token bucket) ...
    enrol_burst: int = 30  # ... and the burst allowed
    submit_rate: float = 5.0  # update submissions per second per facility ...
    submit_burst: int = 40
    rpc_rate: float = 100.0  # any other call, per caller and method
    rpc_burst: int = 400

    @field_validator("listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
            raise ValueError(
                "a region is a short name of letters, digits, '.', '_' or '-' (at most 64), such as north"
            )
        return v

    @model_validator(mode="after")
    def _ca_from(self) -> NodeSettings:
        if self.ca_from and self.role not in (None, "authority"):
            raise ValueError(f"HFL_CA_FROM is for the authority only, not a {self.role}")
        if self.ca_from and not self.tls:
            raise ValueError("HFL_CA_FROM needs HFL_TLS=true (it installs the certificate authority)")
        return self

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def listen_host(self) -> str:
        """The interface of HFL_LISTEN, for binding /metrics to the same one ("[::]" -> "::")."""
        return self.listen.rpartition(":")[0].strip("[]")

    def resolved_advertise_host(self) -> str:
        if self.advertise_host:
            return self.advertise_host
        host = self.listen.rpartition(":")[0]
        if host not in ("0.0.0.0", "[::]", "::"):
            return host
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"

    def resolved_node_id(self) -> str:
        return self.node_id or f"{self.role}-{socket.gethostname()}"


# ------------------------------------------------------------------- what several roles read (mixins)
class _Unset(BaseModel):
    @field_validator(*UNSET_NUMBERS, mode="before", check_fields=False)
    @classmethod
    def _unset(cls, v: Any, info: ValidationInfo) -> Any:
        """An empty value, or the number that used to mean "not set" (UNSET_NUMBERS), means not set."""
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        try:
            number = float(v)
        except (TypeError, ValueError):
            return v  # not a number: the field's type says so
        return None if info.field_name and number == UNSET_NUMBERS[info.field_name] else v


class DataSettings(BaseModel):
    """Leader, facility, validator: where the data come from."""

    dataset: str = "synthetic"
    label: str | None = None

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        builtin = tuple(x for x in SOURCES if not x.startswith("csv:"))
        if v not in builtin and not (v.startswith("csv:") and len(v) > len("csv:")):
            raise ValueError(f"{v!r} is not a data source; use {', '.join(builtin)} or csv:PATH")
        return v


class SecureAggregationSettings(BaseModel):
    """Authority, leader, facility."""

    secagg: bool = True  # masked updates (secure aggregation); false: plain sums, for comparison


class RuleSettings(_Unset):
    """Authority, leader, validator: the aggregation rule and how many bad buckets it leaves out."""

    rule: RuleName = "trimmed_mean"  # robust rule over bucket means (hfl.robust.rules.RULES)
    f: int | None = None  # bad buckets to tolerate; None: the most the rule tolerates with a round's buckets

    @field_validator("rule", mode="before")
    @classmethod
    def _rule(cls, v: Any) -> Any:
        if v not in RULES:
            raise ValueError(f"{v!r} is not an aggregation rule; choose one of {', '.join(RULES)}")
        return v

    @model_validator(mode="after")
    def _f(self) -> RuleSettings:
        if self.f is not None and self.f < 0:
            raise ValueError(
                f"HFL_F must be 0 or more bad buckets, or left unset (or -1) for as many as the rule "
                f"tolerates; got {self.f}"
            )
        return self


class DefenceSettings(_Unset):
    """Leader and validators: the defences and the norm bound the validators hold the leader to."""

    clip_update: float | None = None  # the norm bound C (None: built-in); the ceiling when the bound adapts
    # Derive each round's norm bound from the committed history (hfl/robust/bound.py), between a floor and
    # HFL_CLIP_UPDATE; false: every round uses HFL_CLIP_UPDATE.
    adaptive_bound: bool = True
    # false: NO norm bound, outlier screen, quarantine or validation-score check, so a run shows what those
    # defences protect against (comparison experiments only, never in use).
    defences: bool = True

    @model_validator(mode="after")
    def _clip(self) -> DefenceSettings:
        _more_than_zero("HFL_CLIP_UPDATE", self.clip_update)
        return self

    @property
    def norm_ceiling(self) -> float:
        """The configured norm bound C (HFL_CLIP_UPDATE, or the built-in default): the bound of every
        round with HFL_ADAPTIVE_BOUND=false, the most it can be otherwise."""
        from hfl.learning.train import DEFAULT_CLIP_UPDATE

        return DEFAULT_CLIP_UPDATE if self.clip_update is None else float(self.clip_update)


class PrivacySettings(_Unset):
    """Leader and authority: differential privacy (services/*/privacy.py). Leader: HFL_DP_EPSILON (> 0)
    turns DP on and is the per-facility budget; the leader calibrates the noise for HFL_DP_ROUNDS rounds
    (unset: HFL_ROUNDS). Authority: the same budget, to stop scheduling facilities that have spent it.
    Unset numbers are None (the old 0 or -1 still mean unset: UNSET_NUMBERS);
    hfl.privacy.federation.plan_dp resolves the built-in DP values."""

    dp_epsilon: float | None = None
    dp_rounds: int | None = None
    # extra trainings the budget keeps for rounds the validators send back (each retry trains again and
    # spends privacy): None = 10 % of the rounds, at least 2
    dp_spare_rounds: int | None = None
    dp_delta: float = 1e-5
    dp_mechanism: Mechanism = "gaussian"
    dp_accountant: AccountantKind = "rdp"
    dp_clip: float | None = None  # per-example clipping bound C
    dp_sampling_rate: float | None = None  # Poisson sampling rate q
    dp_local_epochs: float | None = None  # expected passes over the data per round; steps = ceil(epochs / q)
    dp_release_epsilon: float | None = None  # ε for the published statistics (None: 5% of the budget, ≤ 0.1)

    @model_validator(mode="after")
    def _privacy_can_work(self) -> PrivacySettings:
        """Differential-privacy numbers outside their ranges are refused here, not when the leader plans."""
        eps = self.dp_epsilon
        if eps is not None and not (math.isfinite(eps) and eps > 0):
            raise ValueError(
                f"HFL_DP_EPSILON must be a privacy budget more than 0 (such as 1), or left unset to train "
                f"without differential privacy; got {eps!r}"
            )
        if not (math.isfinite(self.dp_delta) and 0 < self.dp_delta < 1):
            raise ValueError(f"HFL_DP_DELTA must be between 0 and 1 (typically 1e-5); got {self.dp_delta!r}")
        q = self.dp_sampling_rate
        if q is not None and not (math.isfinite(q) and 0 < q <= 1):
            raise ValueError(
                f"HFL_DP_SAMPLING_RATE must be a chance more than 0 and at most 1 (such as 0.25), or left "
                f"unset for the built-in value; got {q!r}"
            )
        _more_than_zero("HFL_DP_CLIP", self.dp_clip)
        _more_than_zero("HFL_DP_LOCAL_EPOCHS", self.dp_local_epochs)
        release = self.dp_release_epsilon
        if release is not None and not (math.isfinite(release) and release >= 0):
            raise ValueError(
                f"HFL_DP_RELEASE_EPSILON must be 0 or more, or left unset (or -1) for 5 % of the budget; "
                f"got {release!r}"
            )
        if release is not None and eps is not None and release >= eps:
            raise ValueError(
                f"HFL_DP_RELEASE_EPSILON={release:g} must be less than HFL_DP_EPSILON={eps:g}: the rest of "
                "the budget is what training spends"
            )
        if self.dp_rounds is not None and self.dp_rounds < 1:
            raise ValueError(
                f"HFL_DP_ROUNDS must be a positive number of rounds, or left unset to use HFL_ROUNDS; "
                f"got {self.dp_rounds}"
            )
        if eps is not None:
            from hfl.privacy.federation import sampling_rate_or_default

            try:
                check_supported(self.dp_mechanism, self.dp_accountant, sampling_rate_or_default(q))
            except ValueError:
                raise ValueError(
                    "the RDP accountant cannot account for Laplace noise with sampled batches; use "
                    "HFL_DP_ACCOUNTANT=pld with HFL_DP_MECHANISM=laplace"
                ) from None
        return self


# ------------------------------------------------------------------------ what one role reads (mixins)
class AuthorityFields(BaseModel):
    # Experiments only (`hfl demo` sets it to --seed): bucket and committee draws come from this number
    # instead of the ledger head, so a run repeats exactly. Unset in production, where the draws must not
    # be known before the previous block is committed.
    experiment_seed: int | None = None
    committee_size: int = 4  # 3f+1 (hfl.ledger.committee_size_for)
    bucket_size: int = DEFAULT_BUCKET_SIZE
    min_facilities: int = 3  # rounds wait until this many facilities have registered
    # How many misbehaving facilities the federation must withstand in every round (hfl/robust/sizing.py).
    # Set: checked at start-up against HFL_MIN_FACILITIES, HFL_BUCKET_SIZE, HFL_RULE and HFL_F; a number
    # they cannot withstand is refused. Unset: up to one facility in six is assumed to misbehave (2 of 12,
    # at least 1) for quarantine, and the buckets must be enough to single them out (two per misbehaving
    # facility) whenever buckets of 3 would be: a larger HFL_BUCKET_SIZE that is not is refused at start.
    max_byzantine: int | None = None
    # Quarantine (hfl/robust/reputation.py): the chance that ANY honest facility is quarantined within
    # HFL_QUARANTINE_HORIZON rounds is at most HFL_QUARANTINE_FALSE_POSITIVE, for HFL_MIN_FACILITIES in
    # buckets of HFL_BUCKET_SIZE with HFL_MAX_BYZANTINE misbehaving (unset: one in six, at least 1).
    # Lower means slower quarantine (an offender flagged every round: 9 rounds for 12 facilities at 1 %).
    quarantine_false_positive: float = 0.01
    quarantine_horizon: int = 100
    epoch_rounds: int = 5
    pow_difficulty: int = 12
    # a facility absent this many rounds in a row is left out until it registers again (0: never)
    absent_rounds: int = 3
    # a fog is given facilities in multiples of this many buckets (hfl.schedule.home_fogs): too few
    # buckets per fog and group testing cannot tell a misbehaving facility from its bucket-mates
    fog_min_buckets: int = Field(default=4, ge=1)

    def quarantine_test(self, facilities: int = 0) -> QuarantineTest:
        """The authority's quarantine test for max(HFL_MIN_FACILITIES, ``facilities``) facilities; raises
        ValueError with one plain sentence for settings with which it cannot work."""
        alpha, horizon = self.quarantine_false_positive, self.quarantine_horizon
        if not (isinstance(alpha, float | int) and math.isfinite(alpha) and 0 < alpha < 1):
            raise ValueError(
                "HFL_QUARANTINE_FALSE_POSITIVE must be a chance between 0 and 1 (such as 0.01), "
                f"got {alpha!r}"
            )
        if horizon < 1:
            raise ValueError(f"HFL_QUARANTINE_HORIZON must be at least 1 round, got {horizon}")
        n = max(1, self.min_facilities, facilities)
        try:
            return federation_test(n, self.bucket_size, self.max_byzantine, alpha=alpha, horizon=horizon)
        except ReputationError as e:
            raise ValueError(
                f"quarantine cannot work with these settings: {e} (HFL_MIN_FACILITIES={n}, "
                f"HFL_BUCKET_SIZE={self.bucket_size}, HFL_MAX_BYZANTINE={self.max_byzantine})"
            ) from None


class LeaderFields(_Unset):
    model: ModelKind = "logreg"
    hidden: int = 16
    n_features: int | None = None  # None: from HFL_DATASET (hfl.learning.features)
    rounds: int = 0  # rounds to commit, then stop (0: run for ever)
    # local training; None: the built-in values (hfl.learning.train.train_config)
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    round_timeout: float = 120.0
    round_interval: float = 0.0
    vote_timeout: float = 60.0


FOG_RECEIVE_WINDOW_KIB = 1024  # the default: 1 MiB (hfl.rpc.server)
RECEIVE_WINDOW_KIB_RANGE = (64, 65536)  # 64 KiB (HTTP/2's own default) to 64 MiB


class FogFields(BaseModel):
    # Once half a bucket has answered a stage, the rest get this many times the median answer time (at
    # least HFL_STRAGGLER_FLOOR_S seconds), then count as absent for the round (hfl/deadline.py).
    straggler_factor: float = 4.0
    straggler_floor_s: float = 2.0
    # HTTP/2 receive window per facility connection, KiB (hfl.rpc.server.FOG_RECEIVE_WINDOW, 1 MiB)
    receive_window_kib: int = FOG_RECEIVE_WINDOW_KIB


class FacilityFields(_Unset):
    specialty: str = ""
    shard: str = ""
    n_patients: int | None = None
    byzantine_scale: float = 10.0
    drop_rate: float = 0.0  # experiments: chance of dropping out on purpose
    # re-register when no fog has called on this facility for this long (seconds; 0: never), so that a
    # facility the authority stopped scheduling after missed rounds comes back by itself
    reregister_s: float = 600.0
    crash_at_stage: int = 0  # fault-injection tests only: die (like kill -9) at this secure-aggregation stage
    # `hfl serve facilities`: JSON list of the facilities one process hosts (services/facility/host.py)
    facilities_file: str = ""
    # benchmarks only: facilities send random updates of the model's size instead of training
    bench_updates: bool = False
    dp_budget: float | None = None  # its own stricter privacy budget (None: the federation's)

    @field_validator("specialty")
    @classmethod
    def _specialty(cls, v: str) -> str:
        if v and v not in SPECIALTIES:
            raise ValueError(f"must be one of {', '.join(SPECIALTIES)}")
        return v

    @field_validator("drop_rate")
    @classmethod
    def _drop_rate(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"must be a chance from 0 up to (not including) 1, such as 0.1; got {v!r}")
        return v

    @model_validator(mode="after")
    def _budget(self) -> FacilityFields:
        _more_than_zero("HFL_DP_BUDGET", self.dp_budget)
        return self


class ValidatorFields(BaseModel):
    validation_margin: float = 0.05  # reject a model whose validation accuracy drops by more than this


# ------------------------------------------------------------------- checks across a role's fields
def check_authority(s: AuthoritySettings | Settings) -> None:
    """The authority's settings that would only fail mid-round are refused when they are built."""
    if s.bucket_size < 1:
        raise ValueError("HFL_BUCKET_SIZE must be at least 1")
    if s.secagg and s.bucket_size < MIN_SECURE_BUCKET:
        raise ValueError(
            f"HFL_BUCKET_SIZE={s.bucket_size} is too small for secure aggregation: with fewer than "
            f"{MIN_SECURE_BUCKET} facilities in a group, each could work out another's update from the "
            f"sum; use {MIN_SECURE_BUCKET} or more (or HFL_SECAGG=false for experiments)"
        )
    if s.secagg and s.min_facilities < MIN_SECURE_BUCKET:
        raise ValueError(
            f"HFL_MIN_FACILITIES={s.min_facilities} is too few for secure aggregation, which needs "
            f"groups of at least {MIN_SECURE_BUCKET}: use {MIN_SECURE_BUCKET} or more "
            "(or HFL_SECAGG=false for experiments)"
        )
    if s.min_facilities >= 1:
        try:  # a declared threat the buckets cannot withstand is refused now, not mid-round
            size_federation(
                s.min_facilities,
                rule=s.rule,
                bucket_size=s.bucket_size,
                max_byzantine=s.max_byzantine,
                f=s.f,
                secagg=s.secagg,
            )
        except SizingError as e:
            raise ValueError(f"{e} (checked for HFL_MIN_FACILITIES={s.min_facilities})") from None
    s.quarantine_test()  # a quarantine that cannot tell offenders from honest facilities: refused
    if s.min_facilities < 1 or s.committee_size < 1:
        raise ValueError("HFL_MIN_FACILITIES and HFL_COMMITTEE_SIZE must be at least 1")
    n = s.committee_size
    f = max_faulty(n)
    if n != committee_size_for(f):
        below, above = committee_size_for(f), committee_size_for(f + 1)
        raise ValueError(
            f"HFL_COMMITTEE_SIZE={n} cannot work: a committee must have 3f+1 validators (1, 4, 7, ...) "
            f"so that 2f+1 votes form a quorum; use {below} or {above}"
        )
    if s.epoch_rounds < 1:
        raise ValueError("HFL_EPOCH_ROUNDS must be at least 1")


def check_leader(s: LeaderSettings | Settings) -> None:
    """The leader's settings that would only fail mid-round (or make it wait for ever) are refused."""
    _more_than_zero("HFL_LR", s.lr)
    for name, whole in (("HFL_EPOCHS", s.epochs), ("HFL_BATCH_SIZE", s.batch_size)):
        if whole is not None and whole < 1:
            raise ValueError(f"{name} must be at least 1, or left unset for the built-in value; got {whole}")
    if s.n_features is not None and s.n_features < 1:
        raise ValueError(
            f"HFL_N_FEATURES must be at least 1, or left unset to follow HFL_DATASET; got {s.n_features}"
        )
    if s.rounds < 0:
        raise ValueError("HFL_ROUNDS must be 0 (run for ever) or more")
    if not (s.round_timeout > 0 and s.vote_timeout > 0 and s.round_interval >= 0):
        raise ValueError(
            "HFL_ROUND_TIMEOUT and HFL_VOTE_TIMEOUT must be more than 0 seconds, "
            "and HFL_ROUND_INTERVAL 0 or more"
        )
    if s.model == "mlp" and s.hidden < 1:
        raise ValueError("HFL_HIDDEN must be at least 1 for the mlp model")
    if s.dataset == "synthetic_hard" and s.model != "mlp":
        raise ValueError("HFL_DATASET=synthetic_hard needs HFL_MODEL=mlp: a linear model cannot learn it")
    if s.dp_epsilon is not None and s.dp_rounds is None and s.rounds == 0:
        raise ValueError(
            "differential privacy needs to know how many rounds the budget must last: set HFL_DP_ROUNDS "
            "(or HFL_ROUNDS when the federation stops after a fixed number of rounds)"
        )


def check_fog(s: FogSettings | Settings) -> None:
    if s.straggler_factor < 1 or s.straggler_floor_s < 0:
        raise ValueError("HFL_STRAGGLER_FACTOR must be at least 1 and HFL_STRAGGLER_FLOOR_S 0 or more")
    low, high = RECEIVE_WINDOW_KIB_RANGE
    if not low <= s.receive_window_kib <= high:
        raise ValueError(
            f"HFL_RECEIVE_WINDOW_KIB must be from {low} to {high} (KiB per facility connection), such as "
            f"{FOG_RECEIVE_WINDOW_KIB} (1 MiB, the default) or 8192 for facilities far away on fast links; "
            f"got {s.receive_window_kib}"
        )


# --------------------------------------------------------------------------------- one class per role
class AuthoritySettings(
    NodeSettings, RuleSettings, SecureAggregationSettings, PrivacySettings, AuthorityFields
):
    """`hfl serve authority`."""

    @model_validator(mode="after")
    def _authority(self) -> AuthoritySettings:
        check_authority(self)
        return self


class LeaderSettings(
    NodeSettings,
    DataSettings,
    RuleSettings,
    DefenceSettings,
    SecureAggregationSettings,
    PrivacySettings,
    LeaderFields,
):
    """`hfl serve leader`."""

    @model_validator(mode="after")
    def _leader(self) -> LeaderSettings:
        check_leader(self)
        return self


class FogSettings(NodeSettings, FogFields):
    """`hfl serve fog`."""

    # Experiments/tests only: a fog that swaps one member's key advertisement (secure aggregation must abort)
    byzantine: FogFault = "none"

    @field_validator("byzantine", mode="before")
    @classmethod
    def _byzantine(cls, v: Any) -> Any:
        return _check_fault(v, FOG_FAULTS, "fog")

    @model_validator(mode="after")
    def _fog(self) -> FogSettings:
        check_fog(self)
        return self


class FacilitySettings(NodeSettings, DataSettings, SecureAggregationSettings, FacilityFields):
    """`hfl serve facility` (and each facility `hfl serve facilities` hosts)."""

    byzantine: FacilityAttack = "none"  # experiments only: what it sends instead of its honest update

    @field_validator("byzantine", mode="before")
    @classmethod
    def _byzantine(cls, v: Any) -> Any:
        return _check_fault(v, FACILITY_ATTACKS, "facility")


class ValidatorSettings(NodeSettings, DataSettings, RuleSettings, DefenceSettings, ValidatorFields):
    """`hfl serve validator`."""

    byzantine: ValidatorFault = "none"  # experiments only: how it misbehaves

    @field_validator("byzantine", mode="before")
    @classmethod
    def _byzantine(cls, v: Any) -> Any:
        return _check_fault(v, VALIDATOR_FAULTS, "validator")


class Settings(
    NodeSettings,
    DataSettings,
    RuleSettings,
    DefenceSettings,
    SecureAggregationSettings,
    PrivacySettings,
    AuthorityFields,
    LeaderFields,
    FogFields,
    FacilityFields,
    ValidatorFields,
):
    """Every role's fields in one object, checked for ``role`` as that role's class checks them: for tools
    and tests that build settings without knowing the role (``load_settings()``). Services take their
    role's class."""

    byzantine: FacilityAttack | ValidatorFault | FogFault = "none"  # which ones a role takes: _byzantine

    @field_validator("byzantine", mode="before")
    @classmethod
    def _byzantine(cls, v: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        allowed = {"validator": VALIDATOR_FAULTS, "fog": FOG_FAULTS}.get(role or "", FACILITY_ATTACKS)
        return _check_fault(v, allowed, role or "facility")

    @model_validator(mode="after")
    def _as_role(self) -> Settings:
        if self.role == "authority":
            check_authority(self)
        elif self.role == "leader":
            check_leader(self)
        elif self.role == "fog":
            check_fog(self)
        return self


ROLE_SETTINGS: dict[str, type[NodeSettings]] = {
    "authority": AuthoritySettings,
    "leader": LeaderSettings,
    "fog": FogSettings,
    "facility": FacilitySettings,
    "validator": ValidatorSettings,
}


@overload
def load_settings(role: Literal["authority"], **overrides: object) -> AuthoritySettings: ...
@overload
def load_settings(role: Literal["leader"], **overrides: object) -> LeaderSettings: ...
@overload
def load_settings(role: Literal["fog"], **overrides: object) -> FogSettings: ...
@overload
def load_settings(role: Literal["facility"], **overrides: object) -> FacilitySettings: ...
@overload
def load_settings(role: Literal["validator"], **overrides: object) -> ValidatorSettings: ...
@overload
def load_settings(role: None = None, **overrides: object) -> Settings: ...
@overload
def load_settings(role: str | None = None, **overrides: object) -> NodeSettings: ...
def load_settings(role: str | None = None, **overrides: object) -> NodeSettings:
    """Read the settings of ``role`` (its class in ROLE_SETTINGS; no role: every field, Settings); turn
    validation errors into one plain ConfigError line that names the variable."""
    cls = ROLE_SETTINGS.get(role or "", Settings)
    try:
        return cls(role=role, **overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = "HFL_" + "_".join(str(x) for x in err["loc"]).upper() if err["loc"] else "settings"
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "literal_error":  # "Input should be 'a' or 'b'": say what was given
                msg = f"{err['input']!r} is not one of {err.get('ctx', {}).get('expected', '')}"
            parts.append(msg if loc == "settings" else f"{loc}: {msg}")
        raise ConfigError("bad configuration: " + "; ".join(parts)) from None
