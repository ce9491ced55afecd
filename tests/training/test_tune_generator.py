"""Tuning G on one source face (the official inference's optimize_generator): which layers move, that the copy fits
the source while G stays as it was, and reenact-video with it end to end (the source survives better)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.reenact_video import reenact_video
from models import MissingWeightsError
from models.stylegan2 import Generator
from storage.networks import lpips
from storage.video import VideoReader
from storage.weights import WeightsRegistry
from tasks.reenact import ReenactConfig, networks_for
from tests.media import DEMO_VIDEOS
from tests.training import TINY_G
from training.tune_generator import GeneratorTuningConfig, tune_generator, tuned_parameters

DRIVING = DEMO_VIDEOS / "id00002" / "obama000001" / "00001.mp4"


def test_by_default_only_the_convolutions_from_32_px_up_move():
    generator = Generator(256, 32, 2, channel_max=16)  # the official 256 px layout, narrow
    chosen = {id(parameter) for parameter in tuned_parameters(generator, "from-32px")}
    official = {id(parameter) for conv in list(generator.convs)[4:12] for parameter in conv.parameters()}
    assert len(generator.convs) == 12 and chosen == official  # the official convs[4..11]
    assert len(tuned_parameters(generator, "all")) == len(list(generator.parameters()))
    assert GeneratorTuningConfig().pixel_weight() == 100 and GeneratorTuningConfig(layers="all").pixel_weight() == 1


def test_the_tuned_copy_fits_the_source_and_g_is_left_as_it_was():
    torch.manual_seed(0)
    generator = Generator(**TINY_G).eval()
    code = generator.get_latent(torch.randn(1, TINY_G["style_dim"]))[:, None].repeat(1, generator.n_latent, 1)
    target = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    before = {name: value.clone() for name, value in generator.state_dict().items()}
    steps_done = []
    tuned, report = tune_generator(generator, code, target, GeneratorTuningConfig(steps=40),
                                   lpips(WeightsRegistry(), random_backbone=True), step_done=lambda: steps_done.append(1))

    assert report["steps"] == 40 == len(steps_done) and report["after"]["l2"] < 0.5 * report["before"]["l2"]
    assert report["after"]["lpips"] < report["before"]["lpips"]
    assert all(torch.equal(before[name], value) for name, value in generator.state_dict().items())
    changed = [name for name, value in tuned.state_dict().items() if not torch.equal(before[name], value)]
    assert changed and all(name.startswith(("convs.4.", "convs.5.")) for name in changed)  # the 32 px block only
    assert not any(parameter.requires_grad for parameter in tuned.parameters()) and not tuned.training
    with torch.no_grad():
        fitted = torch.mean((tuned.synthesis(code).image - target) ** 2).item()
    assert fitted == pytest.approx(report["after"]["l2"], rel=1e-4)


def test_bad_requests_are_clear_errors(tmp_path, monkeypatch):
    generator = Generator(**TINY_G)
    code = torch.zeros(1, generator.n_latent, TINY_G["style_dim"])
    with pytest.raises(ValueError, match="at G's resolution 32"):
        tune_generator(generator, code, torch.zeros(1, 3, 64, 64), GeneratorTuningConfig(lpips_weight=0), None)
    with pytest.raises(ValueError, match="needs the LPIPS distance"):
        tune_generator(generator, code, torch.zeros(1, 3, 32, 32), GeneratorTuningConfig(), None)
    # reenactment asks for AlexNet when the config is made into networks, before any video is read ...
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    config = ReenactConfig(weights="demo", weights_dir=str(tmp_path / "weights"), device="cpu", tune_steps=5)
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        networks_for(config)
    pixels = networks_for(config.model_copy(update={"tune_lpips_weight": 0.0}))  # ... tuning on pixels needs none
    assert pixels._perceptual is None


def test_reenact_video_with_g_tuned_on_the_source_keeps_more_of_it(tmp_path):
    """Self-reenactment: frame 0 of the output is the source's own reconstruction, so tuning must bring it closer
    to the source crop (the driving clip's first crop); the summary says what the tuning did."""
    plain = ReenactConfig(weights="demo", device="cpu")
    runs = {}
    for name, config in {"plain": plain, "tuned": plain.model_copy(update={"tune_steps": 60,
                                                                          "tune_lpips_weight": 0.0})}.items():
        summary = reenact_video(driving=str(DRIVING), mode="self", config=config.model_copy(update={"grid": True}),
                                output=str(tmp_path / f"{name}.mp4"))
        first = next(VideoReader(tmp_path / f"{name}.mp4").batches(1))[0].astype(np.float32)
        runs[name] = (summary, np.abs(first[:, 512:] - first[:, :256]).mean())  # result vs the source panel
    (plain_summary, plain_error), (tuned_summary, tuned_error) = runs["plain"], runs["tuned"]
    assert plain_summary.tuning is None and plain_summary.config_hash != tuned_summary.config_hash
    assert tuned_summary.tuning["steps"] == 60
    assert tuned_summary.tuning["after"]["l2"] < 0.5 * tuned_summary.tuning["before"]["l2"]
    assert tuned_error < 0.8 * plain_error
    assert tuned_summary.frames == plain_summary.frames
