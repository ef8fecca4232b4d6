"""Linear CKA (the before/after-adaptation feature similarity analysis) against a hand computation."""
import numpy as np
import pytest

from metarepro.stats import linear_cka


def test_cka_of_a_representation_with_itself_and_its_rotations_is_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-12)    # isotropic scaling, orthogonal map


def test_cka_matches_a_hand_computation():
    # x = (1, 2, 3) centred -> (-1, 0, 1); y = (1, 0, 2) centred -> (0, -1, 1)
    # ||y^T x||^2 = (0 + 0 + 1)^2 = 1; ||x^T x|| = 2; ||y^T y|| = 2  ->  CKA = 1 / 4
    assert linear_cka(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [0.0], [2.0]])) == pytest.approx(0.25, abs=1e-12)
    with pytest.raises(ValueError, match="same n"):
        linear_cka(np.ones((3, 2)), np.ones((4, 2)))
