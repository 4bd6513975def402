"""Settings that cannot work are refused when a service starts, in one plain sentence, never mid-round."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from hfl.cli import main
from hfl.errors import ConfigError
from hfl.robust.reputation import QuarantineTest, federation_test
from hfl.rpc.settings import Settings, load_settings


@pytest.mark.parametrize(
    ("role", "overrides", "message"),
    [
        (
            "leader",
            {"rule": "avg"},
            "HFL_RULE: 'avg' is not an aggregation rule; choose one of mean, trimmed_mean",
        ),
        ("validator", {"rule": "Median"}, "HFL_RULE: 'Median' is not an aggregation rule"),
        ("leader", {"f": -2}, "HFL_F must be 0 or more bad buckets, or left unset (or -1)"),
        ("authority", {"bucket_size": 2}, "HFL_BUCKET_SIZE=2 is too small for secure aggregation"),
        ("authority", {"bucket_size": 0, "secagg": False}, "HFL_BUCKET_SIZE must be at least 1"),
        ("authority", {"min_facilities": 2}, "HFL_MIN_FACILITIES=2 is too few for secure aggregation"),
        ("authority", {"committee_size": 0}, "HFL_COMMITTEE_SIZE must be at least 1"),
        ("leader", {"rounds": -1}, "HFL_ROUNDS must be 0"),
        ("leader", {"round_timeout": 0}, "HFL_ROUND_TIMEOUT and HFL_VOTE_TIMEOUT must be more than 0"),
        ("leader", {"round_interval": -1}, "HFL_ROUND_INTERVAL 0 or more"),
        ("leader", {"model": "mlp", "hidden": 0}, "HFL_HIDDEN must be at least 1"),
        ("leader", {"clip_update": -1.0}, "HFL_CLIP_UPDATE must be more than 0, or left unset"),
        ("validator", {"clip_update": float("inf")}, "HFL_CLIP_UPDATE must be more than 0"),
        ("leader", {"adaptive_bound": "sometimes"}, "HFL_ADAPTIVE_BOUND: Input should be a valid boolean"),
        (
            "authority",
            {"min_facilities": 12, "max_byzantine": 2},
            "12 facilities in buckets of 3 make 4 buckets, but the trimmed mean needs 5 to withstand 2 "
            "misbehaving facilities in every round: enrol at least 15 facilities, or declare "
            "HFL_MAX_BYZANTINE=1 or fewer (checked for HFL_MIN_FACILITIES=12)",
        ),
        (
            "authority",
            {"min_facilities": 12, "max_byzantine": 1, "bucket_size": 5},
            "use buckets of 4 (HFL_BUCKET_SIZE=4)",
        ),
        (
            "authority",
            {"min_facilities": 30, "max_byzantine": 1, "rule": "mean"},
            "use HFL_RULE=trimmed_mean",
        ),
        ("authority", {"min_facilities": 30, "max_byzantine": 2, "f": 1}, "use HFL_F=-1"),
        ("authority", {"min_facilities": 30, "max_byzantine": -1}, "HFL_MAX_BYZANTINE=-1 cannot be negative"),
        (
            "authority",
            {"min_facilities": 12, "bucket_size": 4},
            "12 facilities in buckets of 4 make 3 buckets, too few to single out the 2 misbehaving "
            "facilities a federation of 12 is assumed to have (one in six; quarantine needs 2 buckets per "
            "misbehaving facility, so 4): use buckets of 3 (HFL_BUCKET_SIZE=3), or declare "
            "HFL_MAX_BYZANTINE=1 if you accept a weaker guarantee (checked for HFL_MIN_FACILITIES=12)",
        ),
        ("authority", {"min_facilities": 48, "bucket_size": 8, "secagg": False}, "use buckets of 3"),
        ("authority", {"quarantine_false_positive": 0.0}, "HFL_QUARANTINE_FALSE_POSITIVE must be a chance"),
        ("authority", {"quarantine_false_positive": 1.5}, "HFL_QUARANTINE_FALSE_POSITIVE must be a chance"),
        ("authority", {"quarantine_false_positive": float("nan")}, "HFL_QUARANTINE_FALSE_POSITIVE must be"),
        ("authority", {"quarantine_horizon": 0}, "HFL_QUARANTINE_HORIZON must be at least 1 round"),
        ("fog", {"ca_from": "/run/secrets"}, "HFL_CA_FROM is for the authority only, not a fog"),
        ("fog", {"receive_window_kib": 32}, "HFL_RECEIVE_WINDOW_KIB must be from 64 to 65536"),
        ("fog", {"receive_window_kib": 65537}, "or 8192 for facilities far away on fast links; got 65537"),
        ("fog", {"receive_window_kib": "1 MiB"}, "HFL_RECEIVE_WINDOW_KIB: Input should be a valid integer"),
        ("authority", {"ca_from": "/run/secrets", "tls": False}, "HFL_CA_FROM needs HFL_TLS=true"),
    ],
)
def test_settings_that_cannot_work_are_refused(role: str, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(role=role, **overrides)
    text = str(err.value)
    assert message in text
    assert "Value error" not in text and "\n" not in text


def test_what_does_work_is_accepted() -> None:
    load_settings(role="authority", bucket_size=3, min_facilities=3)


def test_the_norm_bound_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """HFL_ADAPTIVE_BOUND is on unless turned off; HFL_CLIP_UPDATE (0: built-in 3) is the ceiling."""
    s = load_settings(role="validator")
    assert s.adaptive_bound is True and s.norm_ceiling == 3.0
    monkeypatch.setenv("HFL_ADAPTIVE_BOUND", "false")
    monkeypatch.setenv("HFL_CLIP_UPDATE", "1.5")
    s = load_settings(role="leader")
    assert s.adaptive_bound is False and s.norm_ceiling == 1.5
    load_settings(role="authority", bucket_size=2, min_facilities=2, secagg=False)  # plain sums, experiments
    load_settings(role="leader", rule="median", f=0, model="mlp", hidden=4)
    load_settings(role="facility", bucket_size=2)  # only the authority deals buckets
    load_settings(role="authority", min_facilities=12, max_byzantine=1)  # 4 buckets of 3
    load_settings(role="authority", min_facilities=3, max_byzantine=None, rule="mean")  # nothing declared
    load_settings(role="leader", min_facilities=12, max_byzantine=5)  # only the authority sizes buckets
    load_settings(role="authority", min_facilities=12, bucket_size=4, max_byzantine=1)  # a weaker guarantee
    load_settings(role="authority", min_facilities=12, bucket_size=4, rule="mean")  # nothing promised
    load_settings(role="authority", min_facilities=8, bucket_size=4)  # 1 assumed offender, 2 buckets
    load_settings(role="authority", min_facilities=5, bucket_size=4)  # buckets of 3 would not do better
    load_settings(role="authority", min_facilities=8, bucket_size=8, max_byzantine=0)  # benchmarks: none
    load_settings(role="validator", min_facilities=12, bucket_size=4)  # only the authority sizes buckets


def test_a_service_with_an_unknown_rule_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HFL_RULE", "krum")
    assert main(["serve", "leader"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfl: bad configuration: HFL_RULE: 'krum' is not an aggregation rule")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rule", "avg"], "--rule 'avg' is not an aggregation rule"),
        (["--facilities", "2"], "--facilities 2 is too few for secure aggregation"),
        (["--bucket-size", "2"], "--bucket-size 2 is too small for secure aggregation"),
        (["--bucket-size", "2"], "use 3 or more (or --no-secagg for experiments)"),
        # fewer than 4 validators: all on every committee, so the pool is the committee
        (["--validators", "3"], "--validators 3 cannot work: a committee must have 3f+1 validators"),
        (["--validators", "5", "--committee", "7"], "--validators 5 is fewer than the committee of 7"),
        (["--committee", "3"], "--committee 3 cannot work: a committee must have 3f+1 validators (1, 4, 7"),
        (["--drop-rate", "1"], "--drop-rate must be a chance from 0 up to (not including) 1"),
        (["--lr", "-1"], "--lr must be more than 0, or left unset"),
        (["--f", "-3"], "--f must be 0 or more bad buckets"),
        (["--rounds", "0"], "--facilities, --fogs and --rounds must be at least 1"),
        (["--dp-epsilon", "0"], "--dp-epsilon must be more than 0 (leave it out to train without privacy)"),
        (["--dp-epsilon", "1", "--dp-delta", "2"], "--dp-delta must be between 0 and 1"),
        (["--dp-epsilon", "1", "--dp-sampling-rate", "1.5"], "--dp-sampling-rate must be a chance"),
        (["--dp-epsilon", "1", "--dp-clip", "-1"], "--dp-clip must be more than 0"),
        (
            ["--dp-epsilon", "1", "--dp-mechanism", "laplace", "--dp-accountant", "rdp"],
            "use --dp-accountant pld with --dp-mechanism laplace",
        ),
        (["--byzantine", "1:reject_all"], "--byzantine must look like N:MODE"),
        (
            ["--facilities", "12", "--max-byzantine", "2"],
            "12 facilities in buckets of 3 make 4 buckets, but the trimmed mean needs 5 to withstand 2 "
            "misbehaving facilities in every round: enrol at least 15 facilities, or declare "
            "--max-byzantine 1 or fewer",
        ),
        (
            ["--facilities", "12", "--bucket-size", "4", "--max-byzantine", "2"],
            "12 facilities in buckets of 4 make 3 buckets",
        ),
        (
            ["--facilities", "12", "--bucket-size", "4", "--byzantine", "2:scale"],
            "12 facilities in buckets of 4 make 3 buckets, too few to single out the 2 misbehaving "
            "facilities a federation of 12 is assumed to have (one in six; quarantine needs 2 buckets per "
            "misbehaving facility, so 4): use buckets of 3 (--bucket-size 3), or declare --max-byzantine 1 "
            "if you accept a weaker guarantee (checked for --facilities 12)",
        ),
        (
            ["--dataset", "synthetic_hard", "--model", "logreg"],
            "--dataset synthetic_hard needs --model mlp: a linear model cannot learn it",
        ),
    ],
)
def test_the_demo_refuses_before_starting_anything(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hfl import demo

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo started a process before refusing its settings")

    monkeypatch.setattr(demo.Federation, "start", no_process)
    monkeypatch.setattr(demo.Federation, "start_hosted", no_process)
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()  # not even a run folder


def test_the_demo_checks_every_process_it_would_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo builds each role's settings from the environment it is about to pass: a validator, a fog,
    a facility or the leader refusing stops it as surely as the authority does."""
    from hfl import demo

    p = argparse.ArgumentParser()
    demo.add_demo_arguments(p)
    args = p.parse_args(["--facilities", "4", "--validators", "1"])
    demo.check_args(args)
    facilities = demo.plan_facilities(args)
    common = demo.common_env(args)
    good = [
        ("authority", {**common, **demo.authority_env(args, len(facilities))}),
        *(("validator", {**common, **env}) for _, env in demo.validator_envs(args, {})),
        ("fog", common),
        *(("facility", {**common, **f["env"]}) for f in facilities),
        ("leader", {**common, **demo.leader_env(args)}),
    ]
    demo.check_settings(good, demo.DEMO_OPTIONS)
    for role, env, message in [
        (
            "validator",
            {**common, "HFL_BYZANTINE": "stall"},
            "HFL_BYZANTINE: 'stall' is not valid for a validator",
        ),
        ("fog", {**common, "HFL_REGION": "north pole"}, "HFL_REGION: a region is a short name"),
        ("facility", {**common, "HFL_DROP_RATE": "1.5"}, "--drop-rate must be a chance"),
        ("leader", {**common, "HFL_DP_EPSILON": "1", "HFL_ROUNDS": "0"}, "set HFL_DP_ROUNDS (or --rounds"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            demo.check_settings([*good, (role, env)], demo.DEMO_OPTIONS)


def test_an_authority_sized_below_its_declared_threat_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HFL_MIN_FACILITIES", "12")
    monkeypatch.setenv("HFL_BUCKET_SIZE", "4")
    monkeypatch.setenv("HFL_MAX_BYZANTINE", "2")
    assert main(["serve", "authority"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfl: bad configuration: 12 facilities in buckets of 4 make 3 buckets")
    assert "declare HFL_MAX_BYZANTINE=1 or fewer" in err and err.count("\n") == 1


def test_an_authority_with_buckets_too_large_for_quarantine_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing declared: 2 of 12 facilities may misbehave, and 3 buckets of 4 cannot single them out."""
    monkeypatch.setenv("HFL_MIN_FACILITIES", "12")
    monkeypatch.setenv("HFL_BUCKET_SIZE", "4")
    monkeypatch.delenv("HFL_MAX_BYZANTINE", raising=False)
    with pytest.raises(ConfigError, match="too few to single out the 2 misbehaving facilities"):
        load_settings(role="authority")
    assert main(["serve", "authority"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfl: bad configuration: 12 facilities in buckets of 4 make 3 buckets, too few")
    assert "use buckets of 3 (HFL_BUCKET_SIZE=3)" in err and err.count("\n") == 1
    monkeypatch.setenv("HFL_MAX_BYZANTINE", "1")  # the weaker guarantee it offers
    assert load_settings(role="authority").max_byzantine == 1


def test_a_leader_refuses_the_hard_task_with_a_linear_model() -> None:
    with pytest.raises(ValidationError, match="HFL_DATASET=synthetic_hard needs HFL_MODEL=mlp"):
        Settings(role="leader", dataset="synthetic_hard", model="logreg")
    # a facility trains whatever model its leader sends
    assert Settings(role="facility", dataset="synthetic_hard").dataset == "synthetic_hard"
    assert Settings(role="leader", dataset="synthetic_hard", model="mlp").model == "mlp"


def test_the_quarantine_test_follows_the_federation_settings() -> None:
    """Sized from HFL_MIN_FACILITIES (or the facilities registered, if more), HFL_BUCKET_SIZE and
    HFL_MAX_BYZANTINE (unset: one per two buckets), with HFL_QUARANTINE_FALSE_POSITIVE over
    HFL_QUARANTINE_HORIZON rounds."""
    s = load_settings(role="authority", min_facilities=12)
    assert s.quarantine_test() == federation_test(12, 3) == QuarantineTest()
    assert s.quarantine_test(48) == federation_test(48, 3)  # more registered than the minimum
    assert s.quarantine_test().false_positive_bound() == pytest.approx(0.01)
    s = load_settings(
        role="authority",
        min_facilities=24,
        max_byzantine=3,
        quarantine_false_positive=0.001,
        quarantine_horizon=30,
    )
    test = s.quarantine_test()
    assert (test.facilities, test.max_byzantine, test.alpha, test.horizon) == (24, 3, 0.001, 30)
    # a federation too small for group testing still starts: only refused updates quarantine there
    assert not load_settings(role="authority", min_facilities=3).quarantine_test().detects


@pytest.mark.parametrize(
    ("role", "overrides", "message"),
    [
        ("leader", {"model": "cnn"}, "HFL_MODEL: 'cnn' is not one of 'logreg' or 'mlp'"),
        ("leader", {"dp_mechanism": "uniform"}, "HFL_DP_MECHANISM: 'uniform' is not one of 'gaussian' or"),
        ("leader", {"dp_accountant": "moments"}, "HFL_DP_ACCOUNTANT: 'moments' is not one of 'rdp' or 'pld'"),
        ("facility", {"byzantine": "reject_all"}, "HFL_BYZANTINE: 'reject_all' is not valid for a facility"),
        ("validator", {"byzantine": "scale"}, "HFL_BYZANTINE: 'scale' is not valid for a validator"),
        ("fog", {"byzantine": "stall"}, "HFL_BYZANTINE: 'stall' is not valid for a fog; choose one of none"),
        ("facility", {"dataset": "mnist"}, "HFL_DATASET: 'mnist' is not a data source; use synthetic"),
        ("facility", {"dataset": "csv:"}, "HFL_DATASET: 'csv:' is not a data source"),
        ("facility", {"drop_rate": 1.0}, "HFL_DROP_RATE: must be a chance from 0 up to (not including) 1"),
        ("leader", {"lr": -0.1}, "HFL_LR must be more than 0, or left unset"),
        ("leader", {"epochs": -2}, "HFL_EPOCHS must be at least 1"),
        ("leader", {"batch_size": -1}, "HFL_BATCH_SIZE must be at least 1"),
        ("leader", {"n_features": -3}, "HFL_N_FEATURES must be at least 1"),
        ("authority", {"committee_size": 3}, "HFL_COMMITTEE_SIZE=3 cannot work: a committee must have 3f+1"),
        ("authority", {"committee_size": 5}, "so that 2f+1 votes form a quorum; use 4 or 7"),
        ("authority", {"committee_size": 2}, "use 1 or 4"),
        ("leader", {"dp_epsilon": -1.0}, "HFL_DP_EPSILON must be a privacy budget more than 0"),
        ("leader", {"dp_epsilon": float("inf")}, "HFL_DP_EPSILON must be a privacy budget more than 0"),
        ("leader", {"dp_delta": 0.0}, "HFL_DP_DELTA must be between 0 and 1"),
        ("authority", {"dp_delta": 1.0}, "HFL_DP_DELTA must be between 0 and 1"),
        ("leader", {"dp_sampling_rate": 1.5}, "HFL_DP_SAMPLING_RATE must be a chance more than 0 and at"),
        ("leader", {"dp_sampling_rate": -0.2}, "HFL_DP_SAMPLING_RATE must be a chance"),
        ("leader", {"dp_clip": -1.0}, "HFL_DP_CLIP must be more than 0"),
        ("leader", {"dp_local_epochs": -1.0}, "HFL_DP_LOCAL_EPOCHS must be more than 0"),
        ("facility", {"dp_budget": -2.0}, "HFL_DP_BUDGET must be more than 0"),
        ("leader", {"dp_release_epsilon": -0.5}, "HFL_DP_RELEASE_EPSILON must be 0 or more"),
        (
            "leader",
            {"rounds": 5, "dp_epsilon": 1.0, "dp_release_epsilon": 1.0},
            "HFL_DP_RELEASE_EPSILON=1 must be less than HFL_DP_EPSILON=1",
        ),
        ("leader", {"rounds": 5, "dp_epsilon": 1.0, "dp_rounds": -4}, "HFL_DP_ROUNDS must be a positive"),
        ("leader", {"rounds": 0, "dp_epsilon": 1.0}, "set HFL_DP_ROUNDS (or HFL_ROUNDS"),
        (
            "leader",
            {"rounds": 5, "dp_epsilon": 1.0, "dp_mechanism": "laplace"},
            "use HFL_DP_ACCOUNTANT=pld with HFL_DP_MECHANISM=laplace",
        ),
    ],
)
def test_each_check_refuses_in_one_line_naming_the_variable(
    role: str, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(role=role, **overrides)
    text = str(err.value)
    assert message in text
    assert text.startswith("bad configuration: ") and "\n" not in text and "Value error" not in text


def test_what_the_checks_let_through() -> None:
    """The edges of each range load: they are what the refusals above say would work."""
    load_settings(role="authority", committee_size=1)
    load_settings(role="authority", committee_size=7)
    load_settings(role="leader", committee_size=3)  # only the authority draws committees
    load_settings(role="leader", rounds=5, dp_epsilon=1.0, dp_sampling_rate=1.0, dp_release_epsilon=0.0)
    load_settings(role="leader", rounds=0, dp_epsilon=1.0, dp_rounds=50)
    load_settings(role="leader", rounds=5, dp_epsilon=1.0, dp_mechanism="laplace", dp_accountant="pld")
    load_settings(role="fog", byzantine="swap_keys")
    load_settings(role="validator", byzantine="silent")
    load_settings(role="facility", byzantine="stall", dataset="csv:/data/site.csv")
    load_settings(role="facility", dataset="breast_cancer", drop_rate=0.0)


def test_the_values_people_already_write_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/*.yml and docs/configuration.md write 0 or -1 for "not set"; they mean None now, as does ""."""
    old = {
        "HFL_F": "-1",
        "HFL_CLIP_UPDATE": "0",
        "HFL_DP_EPSILON": "0",
        "HFL_DP_BUDGET": "0",
        "HFL_DP_ROUNDS": "0",
        "HFL_DP_RELEASE_EPSILON": "-1",
        "HFL_DP_CLIP": "0.0",
        "HFL_DP_SAMPLING_RATE": "0",
        "HFL_DP_LOCAL_EPOCHS": "0",
        "HFL_LR": "0.0",
        "HFL_EPOCHS": "0",
        "HFL_BATCH_SIZE": "0",
        "HFL_N_FEATURES": "",
    }
    for name, value in old.items():
        monkeypatch.setenv(name, value)
    read = 0
    for role in (None, "authority", "leader", "fog", "facility", "validator"):
        s = load_settings(role=role)
        fields = [name[4:].lower() for name in old if name[4:].lower() in type(s).model_fields]
        assert all(getattr(s, field) is None for field in fields), role
        read += len(fields)
    assert read > 2 * len(old)  # each was read by at least one role (and all by the role-less Settings)
    assert load_settings(role="leader").norm_ceiling == load_settings(role="validator").norm_ceiling == 3.0
    monkeypatch.setenv("HFL_F", "0")  # 0 is a real f (tolerate no bad bucket), not "unset"
    monkeypatch.setenv("HFL_DP_RELEASE_EPSILON", "0")  # no ε for the published statistics
    monkeypatch.setenv("HFL_DP_ROUNDS", "50")
    s = load_settings(role="leader")
    assert (s.f, s.dp_release_epsilon, s.dp_rounds) == (0, 0.0, 50)


def test_the_names_come_from_one_registry_each() -> None:
    from typing import get_args

    from hfl.learning.models import MODEL_KINDS
    from hfl.privacy.dpsgd import ACCOUNTANTS, MECHANISMS
    from hfl.robust.attacks import ATTACKS
    from hfl.robust.rules import REGISTRY, RULES
    from hfl.rpc.settings import FACILITY_ATTACKS, Settings

    assert tuple(REGISTRY) == RULES  # every rule the settings accept exists, and every rule is accepted
    assert (*ATTACKS, "stall") == FACILITY_ATTACKS
    fields = Settings.model_fields
    assert get_args(fields["rule"].annotation) == tuple(RULES)
    assert get_args(fields["model"].annotation) == tuple(MODEL_KINDS)
    assert get_args(fields["dp_mechanism"].annotation) == tuple(MECHANISMS)
    assert get_args(fields["dp_accountant"].annotation) == tuple(ACCOUNTANTS)


def test_each_role_gets_its_own_class_with_only_what_it_reads() -> None:
    from hfl.rpc.settings import (
        AuthoritySettings,
        FacilitySettings,
        FogSettings,
        LeaderSettings,
        ValidatorSettings,
    )

    built = {
        role: load_settings(role=role) for role in ("authority", "leader", "fog", "facility", "validator")
    }
    assert [type(s) for s in built.values()] == [
        AuthoritySettings,
        LeaderSettings,
        FogSettings,
        FacilitySettings,
        ValidatorSettings,
    ]
    assert all(s.role == role for role, s in built.items())
    assert type(load_settings()) is Settings  # no role: every field
    fields = {role: set(type(s).model_fields) for role, s in built.items()}
    common = set.intersection(*fields.values())
    assert {"node_id", "listen", "authority", "tls", "state_dir", "metrics_port", "rpc_rate"} <= common
    assert "dp_epsilon" in fields["leader"] & fields["authority"]  # shared mixins, one definition each
    assert "rule" in fields["leader"] & fields["authority"] & fields["validator"]
    assert "dp_epsilon" not in fields["fog"] | fields["facility"] | fields["validator"]
    assert "rule" not in fields["fog"] | fields["facility"]
    assert "bucket_size" not in fields["leader"] | fields["validator"]
    assert "straggler_factor" in fields["fog"] and "straggler_factor" not in fields["leader"]
    # another role's variable in the environment is ignored, not refused (compose shares one env block)
    fog = load_settings(role="fog", rule="no such rule", bucket_size=0)
    assert not hasattr(fog, "rule") and not hasattr(fog, "bucket_size")


def test_the_demo_refuses_a_facility_count_that_csv_data_decides(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With csv:DIR each file is one facility; a different --facilities was silently ignored before."""
    from hfl import demo

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo started a process before refusing its settings")

    monkeypatch.setattr(demo.Federation, "start", no_process)
    sites = tmp_path / "sites"
    sites.mkdir()
    for i in range(3):
        (sites / f"site{i}.csv").write_text("age,outcome\n50,1\n60,0\n")
    out = tmp_path / "run"
    argv = ["demo", "--out", str(out), "--dataset", f"csv:{sites}", "--label", "outcome"]
    assert main([*argv, "--facilities", "12"]) == 2
    err = capsys.readouterr().err
    assert "each file in the folder is one facility, so this run has 3; leave out --facilities" in err
    assert err.count("\n") == 1 and not out.exists()
    args = demo_args([*argv[1:], "--facilities", "3"])
    demo.check_args(args)  # the same number as there are files is fine, and so is leaving it out
    assert args.facilities == 3
    args = demo_args(argv[1:])
    demo.check_args(args)
    assert args.facilities == demo.DEFAULT_FACILITIES


def demo_args(argv: list[str]) -> argparse.Namespace:
    from hfl.demo import add_demo_arguments

    p = argparse.ArgumentParser()
    add_demo_arguments(p)
    return p.parse_args(argv)
