from click.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_help_lists_one_command_per_flow():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("preprocess-dataset", "encode-dataset", "make-synthetic-dataset", "reenact-video",
                    "reenact-dataset", "demo", "store-info", "store-verify", "weights", "evaluate", "benchmark-report",
                    "train-demo-weights"):
        assert command in result.output


def test_reenact_help_explains_sources_modes_and_outputs():
    result = runner.invoke(app, ["reenact-video", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())  # the help's wrapped columns as running text
    for words in ("The driving video (a file)", "--source-frame", "'self': the driving clip's first frame is the source",
                  "--paste-back", "--grid", "Gaussian sigma in frames", "--store", "--cache", "'voxceleb256'",
                  "--detect-every", "every Nth driving frame", "'mtcnn'"):
        assert words in text


def test_preprocess_help_explains_inputs_and_options():
    result = runner.invoke(app, ["preprocess-dataset", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for words in ("VoxCeleb-layout directory", "--fps", "--task-runner", "--dask-address", "Running it again skips"):
        assert words in text


def test_store_info_on_a_missing_store_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["store-info", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2
    assert "run preprocess-dataset first" in result.output


def test_unknown_detector_stops_before_any_clip(tmp_path):
    result = runner.invoke(app, ["preprocess-dataset", str(tmp_path), "--detector", "nope", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2
    assert "unknown face detector 'nope'" in result.output


def test_bad_option_values_are_refused_with_the_reason(tmp_path):
    result = runner.invoke(app, ["preprocess-dataset", str(tmp_path), "--fps", "-3", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2 and "greater than 0" in " ".join(result.output.split())


def test_weights_list_reports_missing_files_with_their_paths(tmp_path):
    result = runner.invoke(app, ["weights", "list", "--weights-dir", str(tmp_path), "--set", "voxceleb256"])
    assert result.exit_code == 0
    assert "stylegan2-voxceleb256" in result.output and "MISSING" in result.output
    assert str(tmp_path / "stylegan-voxceleb.pt") in result.output


def test_weights_list_unknown_set_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["weights", "list", "--weights-dir", str(tmp_path), "--set", "nope"])
    assert result.exit_code == 2 and "no weights set named 'nope'" in result.output


def test_flame_conversion_of_a_missing_file_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["weights", "flame-to-npz", str(tmp_path / "generic_model.pkl"), str(tmp_path / "f.npz")])
    assert result.exit_code == 2 and "generic_model.pkl" in result.output
