import numpy as np

from models.temporal import nearest_true
from tasks.preprocess import PreprocessConfig


def test_nearest_true_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random(rng.integers(1, 40)) < 0.3
        if not mask.any():
            continue
        good = np.flatnonzero(mask)
        brute = good[np.abs(np.arange(len(mask))[:, None] - good[None, :]).argmin(axis=1)]
        assert np.array_equal(nearest_true(mask), brute)


def test_config_hash_ignores_settings_that_do_not_change_the_crops():
    base = PreprocessConfig(fps=25)
    assert base.config_hash() == PreprocessConfig(fps=25, batch_size=4, weights_dir="/elsewhere").config_hash()
    assert base.config_hash() != PreprocessConfig(fps=25, box_smoothing=0).config_hash()
    assert base.config_hash() != PreprocessConfig(fps=None).config_hash()
