"""Byzantine attacks: each attack's output, and what the norm bound and rules do with them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm as normal_dist

from hfl.robust.attacks import ATTACKS, alie_z, apply_attack, flip_labels
from hfl.robust.rules import aggregate

DELTA = np.array([0.3, -0.4, 0.0, 1.2])


def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_attack_list() -> None:
    assert ATTACKS == (
        "none",
        "sign_flip",
        "scale",
        "gaussian",
        "label_flip",
        "alie",
        "ipm",
        "free_ride",
        "nan",
    )


def test_simple_attacks() -> None:
    none = apply_attack("none", DELTA, rng=rng())
    np.testing.assert_array_equal(none, DELTA)
    assert none is not DELTA
    np.testing.assert_array_equal(apply_attack("label_flip", DELTA, rng=rng()), DELTA)
    np.testing.assert_array_equal(apply_attack("sign_flip", DELTA, rng=rng()), -DELTA)
    np.testing.assert_array_equal(apply_attack("scale", DELTA, rng=rng()), 10.0 * DELTA)
    np.testing.assert_array_equal(apply_attack("scale", DELTA, rng=rng(), scale=-3.0), -3.0 * DELTA)
    np.testing.assert_array_equal(apply_attack("free_ride", DELTA, rng=rng()), np.zeros(4))
    assert np.all(np.isnan(apply_attack("nan", DELTA, rng=rng())))
    assert np.all(np.isnan(apply_attack("nan", DELTA, rng=rng(), clip=1.0)))


def test_gaussian_is_seeded_and_sized() -> None:
    honest = np.full(10_000, 0.01)  # ‖Δ‖ = 1
    a = apply_attack("gaussian", honest, rng=rng(), scale=2.0)
    b = apply_attack("gaussian", honest, rng=rng(), scale=2.0)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, apply_attack("gaussian", honest, rng=np.random.default_rng(5), scale=2.0))
    assert abs(np.linalg.norm(a) - 2.0) < 0.1
    assert abs(a.mean()) < 0.01  # zero-mean noise, not honest + noise


def test_gaussian_of_zero_update_uses_clip_as_reference() -> None:
    out = apply_attack("gaussian", np.zeros(10_000), rng=rng(), scale=1.0, clip=5.0)
    assert np.linalg.norm(out) <= 5.0 + 1e-9
    assert np.linalg.norm(out) > 4.0


def test_alie_z_matches_paper_formula() -> None:
    # n = 50, f = 24: s = 26 - 24 = 2, z = Φ⁻¹(48/50) ≈ 1.75 (the paper's example)
    assert alie_z(50, 24) == pytest.approx(normal_dist.ppf(48 / 50), rel=1e-9)
    assert alie_z(50, 24) == pytest.approx(1.7507, abs=1e-4)
    # n = 12, f = 2: s = 7 - 2 = 5, z = Φ⁻¹(7/12)
    assert alie_z(12, 2) == pytest.approx(normal_dist.ppf(7 / 12), rel=1e-9)
    assert alie_z(4, 1) == 0.0  # p = 1/2
    with pytest.raises(ValueError):
        alie_z(0, 0)
    with pytest.raises(ValueError):
        alie_z(3, 4)


def test_alie_output() -> None:
    peers = np.array([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 2.0, 1.0], [2.0, 0.0, 2.0, 2.0]])
    out = apply_attack("alie", DELTA, rng=rng(), peers=peers, n_byzantine=2, n_total=12)
    z = normal_dist.ppf(7 / 12)
    np.testing.assert_allclose(out, peers.mean(axis=0) - z * peers.std(axis=0))
    # default n_total = k + n_byzantine = 3 + 1: z = 0, the peers' mean
    np.testing.assert_allclose(apply_attack("alie", DELTA, rng=rng(), peers=peers), peers.mean(axis=0))


def test_ipm_output() -> None:
    peers = np.array([[1.0, 2.0, 0.0, 4.0], [3.0, 2.0, 0.0, 0.0]])
    out = apply_attack("ipm", DELTA, rng=rng(), peers=peers, epsilon=0.1)
    np.testing.assert_allclose(out, -0.1 * np.array([2.0, 2.0, 0.0, 2.0]))
    np.testing.assert_allclose(apply_attack("ipm", DELTA, rng=rng(), peers=peers[0]), -0.5 * peers[0])


def test_stealthy_clip_keeps_direction() -> None:
    out = apply_attack("scale", DELTA, rng=rng(), scale=100.0, clip=1.0)
    assert np.linalg.norm(out) == pytest.approx(1.0)
    np.testing.assert_allclose(out / np.linalg.norm(out), DELTA / np.linalg.norm(DELTA))
    small = apply_attack("sign_flip", 0.01 * DELTA, rng=rng(), clip=1.0)
    np.testing.assert_array_equal(small, -0.01 * DELTA)  # already inside: untouched


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("poison", {}),
        ("alie", {}),
        ("ipm", {}),
        ("ipm", {"peers": np.zeros((2, 3))}),
        ("ipm", {"peers": np.full((2, 4), np.nan)}),
        ("ipm", {"peers": np.zeros((2, 4)), "epsilon": 0.0}),
        ("alie", {"peers": np.zeros((2, 4)), "n_byzantine": 0}),
        ("scale", {"scale": float("inf")}),
        ("scale", {"clip": -1.0}),
    ],
)
def test_attack_refusals(name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        apply_attack(name, DELTA, rng=rng(), **kwargs)  # type: ignore[arg-type]


def test_honest_must_be_a_vector() -> None:
    with pytest.raises(ValueError):
        apply_attack("none", np.zeros((2, 2)), rng=rng())
    with pytest.raises(ValueError):
        apply_attack("none", np.zeros(0), rng=rng())


def test_flip_labels() -> None:
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 1, 0])), [1, 0, 0, 1])
    np.testing.assert_array_equal(flip_labels(np.array([0, 2, 1]), n_classes=4), [3, 1, 2])
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 2])), [2, 1, 0])
    np.testing.assert_array_equal(flip_labels(np.array([True, False])), [False, True])
    np.testing.assert_array_equal(flip_labels(np.array([1.0, 0.0])), [0.0, 1.0])
    assert flip_labels(np.array([1, 1])).tolist() == [0, 0]  # binary even if only one class present
    assert flip_labels(np.array([], dtype=int)).size == 0
    for bad in (np.array([0.5]), np.array([-1, 0]), np.array(["a"])):
        with pytest.raises(ValueError):
            flip_labels(bad)
    with pytest.raises(ValueError):
        flip_labels(np.array([0, 3]), n_classes=3)


# --- attacks against the aggregation -------------------------------------------------------------------


def _honest_updates(n: int, d: int, clip: float, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    ups = 0.5 * clip * np.ones(d) / np.sqrt(d) + 0.1 * clip * g.normal(size=(n, d)) / np.sqrt(d)
    norms = np.linalg.norm(ups, axis=1, keepdims=True)
    return ups * np.minimum(1.0, clip / norms)


def _bucket_sums(updates: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    b = updates.shape[0] // g
    return updates.reshape(b, g, -1).sum(axis=1), np.full(b, g)


@pytest.mark.parametrize("name", ["scale", "nan", "gaussian"])
def test_norm_bound_stops_blunt_attacks(name: str) -> None:
    clip = 1.0
    ups = _honest_updates(12, 20, clip, seed=3)
    ups[4] = apply_attack(name, ups[4], rng=rng(), scale=10.0)  # facility 4 is in bucket 1
    sums, counts = _bucket_sums(ups, 3)
    res = aggregate("mean", sums, counts, f=1, clip_update=clip)
    assert res.flagged == (1,)
    assert res.flag_kinds == {1: "norm"}
    assert np.all(np.isfinite(res.update))


def test_subtle_attacks_pass_the_bound_but_trimmed_mean_bounds_them() -> None:
    clip = 1.0
    ups = _honest_updates(15, 20, clip, seed=4)
    honest_mean = ups.mean(axis=0)
    peers = np.delete(ups, 7, axis=0)
    ups[7] = apply_attack("ipm", ups[7], rng=rng(), peers=peers, epsilon=0.5)
    sums, counts = _bucket_sums(ups, 3)
    mean = aggregate("mean", sums, counts, f=1, clip_update=clip)
    robust = aggregate("trimmed_mean", sums, counts, f=1, clip_update=clip)
    assert mean.flagged == robust.flagged == ()  # inside the bound: not caught by it
    means = sums / counts[:, None]
    assert np.all(robust.update >= means.min(axis=0)) and np.all(robust.update <= means.max(axis=0))
    assert np.linalg.norm(robust.update - honest_mean) < np.linalg.norm(means[2] - honest_mean)
