"""Statistics on distance matrices, against direct computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from mechscope import stats


def points_in_groups(separation, *, per_group=4, groups=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = separation * np.eye(groups, 5)
    points = np.concatenate([c + rng.normal(size=(per_group, 5)) for c in centres])
    labels = np.repeat([f"g{i}" for i in range(groups)], per_group)
    return squareform(pdist(points)), labels, points


def test_pseudo_f_matches_the_euclidean_anova_f():
    # With Euclidean distances, PERMANOVA's pseudo-F is the classical multivariate ANOVA F
    # (trace form): between-group / within-group sums of squares about the centroids.
    distances, labels, points = points_in_groups(2.0)
    grand = points.mean(axis=0)
    between = sum(
        np.sum(labels == g) * np.sum((points[labels == g].mean(axis=0) - grand) ** 2)
        for g in np.unique(labels)
    )
    within = sum(
        np.sum((points[labels == g] - points[labels == g].mean(axis=0)) ** 2)
        for g in np.unique(labels)
    )
    n, k = len(labels), 3
    expected = (between / (k - 1)) / (within / (n - k))
    assert stats.pseudo_f(distances, labels) == pytest.approx(expected, rel=1e-10)


def test_permanova_separates_groups_and_not_noise():
    distances, labels, _ = points_in_groups(8.0)
    separated = stats.permanova(distances, labels, permutations=999)
    assert separated["p_value"] == pytest.approx(1 / 1000)
    noise, labels, _ = points_in_groups(0.0, seed=3)
    assert stats.permanova(noise, labels, permutations=999)["p_value"] > 0.05


def test_permanova_reports_the_smallest_attainable_p():
    distances, labels, _ = points_in_groups(50.0, per_group=2, groups=2)
    result = stats.permanova(distances, labels, permutations=999)
    # 4 networks in two pairs: 4!/(2!·2!) = 6 labellings, and swapping the two groups gives
    # the same F, so p ≥ 2/6 however strong the separation.
    assert result["exact"]
    assert result["min_p"] == pytest.approx(2 / 6)
    assert result["p_value"] == pytest.approx(2 / 6)
    unequal = stats.permanova(*points_in_groups(50.0, per_group=2, groups=3)[:2])
    # 6!/(2!2!2!) = 90 labellings; permuting the three equal groups ties 3! = 6 of them.
    assert unequal["min_p"] == pytest.approx(6 / 90)
    zero = stats.permanova(np.zeros((4, 4)), ["a", "a", "b", "b"])
    assert np.isnan(zero["p_value"]) and np.isnan(zero["pseudo_f"])


def test_nearest_neighbour_accuracy():
    distances, labels, _ = points_in_groups(20.0)
    assert stats.nearest_neighbour_accuracy(distances, labels) == 1.0
    flipped = labels.copy()
    flipped[[0, 4]] = flipped[[4, 0]]
    masked = distances + np.diag(np.full(len(labels), np.inf))
    expected = np.mean(flipped[np.argmin(masked, axis=1)] == flipped)
    assert expected < 1
    assert stats.nearest_neighbour_accuracy(distances, flipped) == pytest.approx(expected)
    tied = np.ones((3, 3)) - np.eye(3)
    # Every neighbour tied: each network scores the share of others sharing its label.
    assert stats.nearest_neighbour_accuracy(tied, ["a", "a", "b"]) == pytest.approx(
        (0.5 + 0.5 + 0.0) / 3
    )


def test_mds_recovers_a_planar_configuration_up_to_rigid_motion():
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(7, 2))
    coordinates = stats.mds(squareform(pdist(plane)))
    np.testing.assert_allclose(squareform(pdist(coordinates)), squareform(pdist(plane)), atol=1e-9)


def test_clusters_follow_groups():
    distances, labels, _ = points_in_groups(20.0)
    clusters = stats.cluster(distances, 3)
    assert len(set(clusters)) == 3
    for group in np.unique(labels):
        assert len(set(clusters[labels == group])) == 1


def test_within_between_means():
    distances = np.array([[0, 1, 5, 6], [1, 0, 7, 8], [5, 7, 0, 2], [6, 8, 2, 0]], float)
    result = stats.within_between(distances, ["a", "a", "b", "b"], "a", "b")
    assert result["between"] == pytest.approx((5 + 6 + 7 + 8) / 4)
    assert result["within"] == pytest.approx((1 + 2) / 2)
    assert result["difference"] == pytest.approx(6.5 - 1.5)
    three = np.pad(distances, ((0, 1), (0, 1)), constant_values=9.0)
    np.fill_diagonal(three, 0.0)
    only_ab = stats.within_between(three, ["a", "a", "b", "b", "c"], "a", "b")
    assert only_ab["between"] == result["between"] and only_ab["within"] == result["within"]
    everyone = stats.within_between(three, ["a", "a", "b", "b", "c"])
    assert sorted(everyone["within_values"]) == [1, 2]
    assert len(everyone["between_values"]) == 4 + 4


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match="square"):
        stats.pseudo_f(np.zeros((2, 3, 1)), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        stats.pseudo_f(np.zeros((3, 3)), ["a", "b"])
    assert math.isnan(stats.pseudo_f(np.ones((3, 3)) - np.eye(3), ["a", "a", "a"]))


def test_permanova_enumerates_every_labelling_of_a_small_design():
    values = np.asarray([0.0, 0.1, 0.2, 5.0, 5.1, 5.2])
    distances = np.abs(values[:, None] - values[None, :])
    result = stats.permanova(distances, ["a"] * 3 + ["b"] * 3, permutations=999)
    # 6!/(3!3!) = 20 distinct labellings; the true one and its swap give the largest F.
    assert result["exact"] and result["permutations"] == 19
    assert result["p_value"] == pytest.approx(2 / 20)
    assert result["min_p"] == pytest.approx(2 / 20), "the group swap ties the largest F"


def test_condensed_input_and_non_distances():
    distances, labels, _ = points_in_groups(20.0)
    condensed = squareform(distances)
    assert stats.nearest_neighbour_accuracy(condensed, labels) == 1.0
    assert stats.pseudo_f(condensed, labels) == pytest.approx(stats.pseudo_f(distances, labels))
    with pytest.raises(ValueError, match="symmetric"):
        stats.square_distances(np.asarray([[0.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="finite"):
        stats.square_distances(np.asarray([[0.0, np.nan], [np.nan, 0.0]]))
