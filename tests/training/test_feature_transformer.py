"""The Feature Transformer: untrained, it renders exactly what G alone renders; train-feature-transformer lowers the
error against the target frame below G alone's on fixed validation pairs, and the export (what the final
checkpoint holds) loads by file into the Reenactor that reenactment runs; the bundled demo transformer brings
self-reenacted frames closer to the real ones than G alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flows.reenact_video import reenact_video
from flows.train_feature_transformer import train_feature_transformer as train_flow
from models.directions import DirectionMatrix, ParamRanges
from models.feature_transformer import FeatureTransformer
from models.images import resize_to, to_pixels
from models.reenact import Reenactor
from models.stylegan2 import Generator
from storage.settings import DEMO_PHOTO
from storage.video import VideoReader
from storage.weights import WeightsRegistry
from tasks.reenact import ReenactConfig, networks_for, prepare_source
from tests.media import DEMO_VIDEOS
from tests.training import QUICK, TINY_G, tiny_generator_file, write_world
from training.common.checkpoints import Export, save_export
from training.common.distributed import Distributed
from training.data import StoreCrops
from training.feature_transformer import FeatureTransformerStage, FeatureTransformerTrainingConfig

DRIVING = DEMO_VIDEOS / "id00002" / "obama000001" / "00001.mp4"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny G and A as files, and a store of G's renders with face3d and inversion stages."""
    root = tmp_path_factory.mktemp("feature-transformer")
    generator = tiny_generator_file(root / "g.safetensors")
    store = write_world(root, generator, clips=2)
    torch.manual_seed(1)
    directions = DirectionMatrix(shift_dim=TINY_G["style_dim"], num_layers=4)
    table = np.load(store.root / "ranges-synth-regressor.npy")
    entries = {"shift_scale": 6.0, "ranges": [[None if np.isnan(v) else v for v in row] for row in table.tolist()]}
    save_export(Export(directions, "models.directions:DirectionMatrix",
                       {"shift_dim": TINY_G["style_dim"], "num_layers": 4}, "A_matrix", entries),
                root / "a.safetensors", torch.float32, {})
    return root


def test_an_untrained_transformer_renders_what_g_alone_renders():
    torch.manual_seed(0)
    generator = Generator(**TINY_G).eval()
    transformer = FeatureTransformer(generator.channels[16], resolution=16, image_size=32)
    reenactor = Reenactor(generator, DirectionMatrix(shift_dim=64, num_layers=4), ParamRanges.load(),
                          transformer=transformer)
    wplus, params = torch.randn(1, generator.n_latent, 64), torch.zeros(1, 15)
    driving, source_image = torch.randn(3, 15), torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        refined = reenactor(wplus, params, driving, source_image=source_image)
        plain = reenactor(wplus, params, driving)
    assert refined.shape == (3, 3, 32, 32) and torch.equal(refined, plain)
    with pytest.raises(ValueError, match="fits a 64 px G"):
        Reenactor(generator, DirectionMatrix(shift_dim=64, num_layers=4), ParamRanges.load(),
                  transformer=FeatureTransformer(generator.channels[16], resolution=16, image_size=64))


def test_training_beats_g_alone_and_the_export_loads_into_reenactment(world, tmp_path):
    config = FeatureTransformerTrainingConfig(**{
        **QUICK, "batch_size": 4, "store": str(world / "world.zarr"), "out": str(tmp_path / "ft"),
        "generator": str(world / "g.safetensors"), "directions": str(world / "a.safetensors"), "resolution": 16,
        "hidden": 16, "steps": 40, "lr": 3e-3, "log_every": 10, "checkpoint_every": 40, "mean_latent_samples": 64,
        "validation_count": 6, "export_dtype": "fp32"})
    stage = FeatureTransformerStage(config, Distributed(0, 0, 1, torch.device("cpu")), StoreCrops(config.store, 32))
    untrained = stage.scalars()
    assert untrained["val/l1"] == pytest.approx(untrained["val/l1_plain"])  # starts as G alone

    summary = train_flow(config=config)
    rows = [json.loads(line) for line in open(f"{config.out}/stats.jsonl")]
    assert summary.steps == 40 and [row["step"] for row in rows] == [10, 20, 30, 40]
    assert rows[-1]["l1"] < rows[0]["l1"]

    transformer, entries = WeightsRegistry(tmp_path / "weights").load_spec(summary.export)
    stage.transformer.load_state_dict(transformer.state_dict())
    trained = stage.scalars()  # the same fixed validation pairs
    assert trained["val/l1"] < 0.9 * trained["val/l1_plain"]  # the source's detail, carried to the target
    assert trained["val/l1_plain"] == pytest.approx(untrained["val/l1_plain"])  # the same pairs, the same G and A
    assert isinstance(transformer, FeatureTransformer) and transformer.config() == {
        "channels": 32, "resolution": 16, "image_size": 32, "hidden": 16}
    assert entries["directions"] == str(world / "a.safetensors")
    checkpoint_state = torch.load(summary.checkpoint, weights_only=True)["feature_transformer"]
    assert all(torch.equal(checkpoint_state[name], value) for name, value in transformer.state_dict().items())


def test_unknown_names_and_files_are_clear_errors(tmp_path):
    registry = WeightsRegistry(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a weights-registry name"):
        registry.load_spec("no-such-transformer")
    (tmp_path / "bare.safetensors").write_bytes(b"")
    with pytest.raises(Exception, match="bare.safetensors"):
        registry.load_spec(str(tmp_path / "bare.safetensors"))


def test_the_bundled_transformer_keeps_more_of_the_source_than_g_alone(tmp_path):
    """Self-reenactment of a bundled clip with the demo set, with its Feature Transformer (the default) and with
    `none`: against the real frames, the transformer's frames are closer (measured 39.8 vs 49.0 of 255)."""
    errors = {}
    for transformer in (None, "none"):
        config = ReenactConfig(weights="demo", device="cpu", grid=True, feature_transformer=transformer)
        output = tmp_path / f"{transformer}.mp4"
        summary = reenact_video(driving=str(DRIVING), mode="self", config=config, output=str(output))
        frames = np.concatenate(list(VideoReader(output).batches(64))).astype(np.float32)
        errors[transformer] = np.abs(frames[:, :, 512:] - frames[:, :, 256:512]).mean()  # result vs driving
        assert summary.feature_transformer == (None if transformer == "none" else "demo-feature-transformer")
    assert errors[None] < 0.9 * errors["none"]


def test_a_transformer_that_does_not_fit_the_sets_generator_says_what_to_do(tmp_path):
    """A weights directory with a demo G of its own (a user's retrained one) and no transformer for it: the bundled
    transformer does not fit, and the error says how to go on; with 'none' G renders alone."""
    (tmp_path / "demo").mkdir()
    torch.manual_seed(0)
    generator = Generator(64, 256, 2, channel_max=32)  # the demo G's size and style, other channels
    save_export(Export(generator, "models.stylegan2:Generator", {"size": 64, "style_dim": 256, "n_mlp": 2,
                                                                 "channel_max": 32}, "g_ema"),
                tmp_path / "demo" / "generator.safetensors", torch.float32, {})
    config = ReenactConfig(weights="demo", weights_dir=str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="does not fit the generator demo-generator.*--feature-transformer none"):
        networks_for(config)
    assert networks_for(config.model_copy(update={"feature_transformer": "none"})).reenactor.transformer is None


def test_reenactment_computes_the_sources_detail_once_and_draws_the_same_frames():
    """generate() keeps the transformer's per-source part between batches; the frames equal the uncached render."""
    config = ReenactConfig(weights="demo", device="cpu")
    networks = networks_for(config)
    source = networks.tuned(prepare_source(str(DEMO_PHOTO), 0, config, networks), config)
    driving = np.stack([source.params] * 3)
    driving[:, 0] += np.array([-10.0, 0.0, 10.0], np.float32)
    first = networks.generate(source, driving)
    kept = networks._refinement
    second = networks.generate(source, driving[:1])
    assert networks._refinement is kept and kept[0]() is source
    reenactor = networks.reenactor
    image = networks._at_generator_size(source.crop)

    def uncached(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return to_pixels(resize_to(reenactor(torch.as_tensor(source.wplus[None]), torch.as_tensor(
                source.params[None]), torch.as_tensor(rows), source_image=image), 256))

    # (a batch of 1 is compared with a batch of 1: batched convolutions round differently)
    assert np.array_equal(first, uncached(driving)) and np.array_equal(second, uncached(driving[:1]))
    assert not np.array_equal(first[0], first[2])  # the frames differ: the pose moved
