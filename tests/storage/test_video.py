import numpy as np
import pytest

from storage.video import VideoError, VideoReader, VideoWriter, probe, sample_indices
from tests.media import audio_only, face_frames, truncated, variable_frame_rate, write_clip, zero_frames


def test_write_probe_decode_round_trip(tmp_path):
    frames = face_frames(30, size=128)
    path = write_clip(tmp_path / "clip.mp4", frames, fps=25, audio=True, crf=0)
    info = probe(path)
    assert (info.frames, info.fps, info.width, info.height) == (30, 25.0, 128, 128)
    assert info.has_audio and not info.variable_frame_rate
    reader = VideoReader(path)
    decoded = np.concatenate(list(reader.batches(7)))
    assert decoded.shape == (30, 128, 128, 3)
    assert np.abs(decoded.astype(int) - frames).mean() < 3  # crf 0 is near-lossless; yuv420 rounding remains


def test_resampling_picks_the_frame_shown_at_each_tick():
    timestamps = np.arange(60) / 30.0  # 2 s at 30 fps
    picked = sample_indices(timestamps, 25)
    assert len(picked) == 50  # ticks 0, 0.04, ..., 1.96
    assert picked[:6].tolist() == [0, 1, 2, 3, 4, 6]  # floor(k * 30 / 25)
    assert sample_indices(timestamps, None).tolist() == list(range(60))


def test_variable_frame_rate_is_detected_and_resampled_by_time(tmp_path):
    path = variable_frame_rate(tmp_path / "vfr.mp4", face_frames(20, size=64), [40, 40, 80, 20])
    info = probe(path)
    assert info.variable_frame_rate
    reader = VideoReader(path, fps=25)
    # 5 cycles of 180 ms = 0.88 s of timestamps (last frame starts at 880 ms): ticks 0..22 at 40 ms
    assert len(reader) == 23
    assert sum(len(b) for b in reader.batches(8)) == 23


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("not a video"), "not a media file"),
        (lambda p: audio_only(p), "audio-only"),
        (lambda p: zero_frames(p), "no video stream"),
        (lambda p: None, "not a readable file"),
    ],
)
def test_probe_rejects_unusable_files(tmp_path, make, message):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(VideoError, match=message):
        probe(path)


def test_truncated_file_fails_to_decode_cleanly(tmp_path):
    good = write_clip(tmp_path / "good.mp4", face_frames(40, size=64))
    bad = truncated(tmp_path / "bad.mp4", good)
    with pytest.raises(VideoError):
        probe(bad)
        reader = VideoReader(bad)
        for _ in reader.batches(8):
            pass


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(ValueError):
        with VideoWriter(path, 25, (64, 64)) as writer:
            writer.write(np.zeros((2, 64, 64, 3), np.uint8))
            writer.write(np.zeros((2, 32, 32, 3), np.uint8))  # wrong size
    assert list(tmp_path.iterdir()) == []


def test_rotated_file_is_turned_upright_as_ffmpeg_shows_it(tmp_path):
    """A phone-style file (landscape pixels, a 90° display matrix) decodes to what ffmpeg itself displays."""
    import subprocess

    from storage.video import ffmpeg_exe

    frames = np.zeros((3, 48, 80, 3), np.uint8)
    frames[:, :12, :20] = 255  # a white block in the stored top-left corner tells the turn apart
    plain = write_clip(tmp_path / "plain.mp4", frames, fps=25, crf=0)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-display_rotation", "90", "-i", str(plain), "-c", "copy",
                    str(rotated)], check=True)
    shown = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(rotated), "-f", "rawvideo",
                            "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    decoded = np.concatenate(list(VideoReader(rotated).batches(8)))
    assert decoded.shape == (3, 80, 48, 3)  # upright: portrait
    expected = np.frombuffer(shown, np.uint8).reshape(3, 80, 48, 3)
    assert np.abs(decoded.astype(int) - expected).mean() < 2


def test_truncated_file_is_seen_by_probe_and_a_damaged_frame_by_the_reader(tmp_path):
    from storage.video import TruncatedVideoError, count_readable
    from tests.media import DEMO_VIDEOS, damaged_middle

    whole = write_clip(tmp_path / "whole.mp4", face_frames(50), audio=True)
    cut = probe(truncated(tmp_path / "cut.mp4", whole, keep=0.7))
    assert (cut.declared_frames, cut.frames, cut.truncated) == (50, 12, True) and not probe(whole).truncated
    damaged = damaged_middle(tmp_path / "damaged.mp4", DEMO_VIDEOS / "id00001" / "astronaut01" / "00001.mp4")
    assert not probe(damaged).truncated and count_readable(damaged) == (25, "the decoder reports a damaged frame")
    with pytest.raises(TruncatedVideoError, match=r"cannot decode frame 26 of 50 .*; 25 frames readable") as error:
        for _ in VideoReader(damaged).batches(8):
            pass
    assert error.value.readable == 25
    tolerant = VideoReader(damaged, accept_truncated=True)
    first = np.concatenate(list(tolerant.batches(8)))
    assert len(first) == len(tolerant) == tolerant.readable_frames == 25 and tolerant.decode_error.startswith("frame 26")
    assert np.array_equal(first, np.concatenate(list(tolerant.batches(7))))  # the second pass: the same frames


def test_a_broken_time_base_is_refused_before_decoding(tmp_path):
    from tests.media import DEMO_VIDEOS, absurd_time_base

    path = absurd_time_base(tmp_path / "slow.mp4", DEMO_VIDEOS / "id00001" / "astronaut01" / "00001.mp4")
    assert probe(path).fps < 0.01 and path.stat().st_size < 60_000
    with pytest.raises(VideoError, match=r"50 frames span 25,088 s .* would make 627,201 frames"):
        VideoReader(path, fps=25)
    assert len(VideoReader(path)) == 50  # its frames as they are: no resampling, no amplification
    assert len(VideoReader(path, fps=0.019)) == 477  # repeating each frame up to 10 times is still allowed
