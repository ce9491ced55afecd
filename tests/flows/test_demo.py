"""The README's main job, and the bundled demo weights measured on people they never saw (fixtures: tests/conftest.py)."""

import json

import pytest

from flows.train_demo_weights import heldout_evaluation, heldout_figures
from storage.video import probe, read_frame
from storage.weights import BUNDLED_DIR, WEIGHT_SETS, WeightsRegistry


def test_the_demo_set_ships_in_the_repository_with_its_provenance(tmp_path):
    registry = WeightsRegistry(tmp_path)  # an empty weights directory: the bundled files answer
    rows = registry.status("demo")
    assert all(row["present"] for row in rows)
    assert all(row["path"].startswith(str(BUNDLED_DIR)) for row in rows)
    assert sum(row["size"] for row in rows) < 50 * 2**20
    provenance = json.loads((BUNDLED_DIR / "demo" / "provenance.json").read_text())
    for name in WEIGHT_SETS["demo"]:
        assert provenance["files"][name]["sha256"] == registry.sha256(name)
    assert set(provenance["stages"]) == {"generator", "encoder", "directions", "feature_transformer"}
    assert provenance["heldout"]["apd_reenacted"] < provenance["heldout"]["apd_static"]


def test_demo_reenacts_a_synthetic_source_and_a_real_photo(demo_run):
    out, output = demo_run
    for name in ("synthetic.mp4", "photo.mp4", "photo-tuned.mp4"):
        video = out / "videos" / name
        assert name in output
        info = probe(video)
        assert info.frames == 75 and info.width == 3 * 256 and info.height == 256  # source | driving | result
        assert read_frame(video, 40)[:, 512:].std() > 10  # a picture, not a flat frame
    assert (out / "synthetic" / "truth.parquet").is_file()
    # G tuned on the photo keeps more of it than G as it is (the result panel vs the source panel)
    photo, tuned = (read_frame(out / "videos" / name, 0).astype(float) for name in ("photo.mp4", "photo-tuned.mp4"))
    assert abs(tuned[:, 512:] - tuned[:, :256]).mean() < 0.8 * abs(photo[:, 512:] - photo[:, :256]).mean()


@pytest.mark.slow
def test_directions_move_held_out_faces_toward_the_true_pose(tmp_path):
    """The recipe's own held-out measurement, repeated with the bundled files: 12 cross pairs of 6 people the set
    never saw, every frame, against the true parameters; the same figures as provenance.json."""
    figures = heldout_figures(heldout_evaluation(tmp_path))
    assert figures["pairs"] == 12 and figures["net3d"] == "synth-regressor" and figures["identity"] == "dlib"
    assert figures["apd_driving"] < figures["apd_reenacted"]  # the Net3D's own error is the floor
    # well below doing nothing (Δp = 0). Expressions do not transfer with this small set (the reenacted AED is above
    # doing nothing's: the transformer redraws the source's expression; README, Demo weights), so no AED claim.
    assert figures["apd_reenacted"] < 0.8 * figures["apd_static"], figures
    recorded = json.loads((BUNDLED_DIR / "demo" / "provenance.json").read_text())["heldout"]
    for name in ("apd_reenacted", "apd_static", "aed_reenacted", "csim"):
        assert figures[name] == pytest.approx(recorded[name], rel=0.05), name  # another CPU may flip a detection
    # a person among the 6 is chance at 1/6; the recorded share, within a few of the 600 frames
    assert figures["identity_retrieval"] > 1 / 6
    assert figures["identity_retrieval"] == pytest.approx(recorded["identity_retrieval"], abs=0.05)
    assert set(figures["per_parameter"]) == set(recorded["per_parameter"])
