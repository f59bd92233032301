
import numpy as np
import pytest

from longvila.data.video import MediaError, load_video, num_frames_to_sample, sample_frame_indices


def decoded_levels(frames):
    return frames.reshape(len(frames), -1).mean(axis=1)


def test_uniform_sampling_selects_exact_frames(ramp_video):
    path, levels = ramp_video
    frames = load_video(path, num_frames=8)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    expected = [0, 3, 7, 10, 13, 16, 20, 23]  # round(linspace(0, 23, 8))
    assert sample_frame_indices(24, 8).tolist() == expected
    np.testing.assert_allclose(decoded_levels(frames), levels[expected], atol=2.5)


def test_all_frames_and_oversampling(ramp_video):
    path, levels = ramp_video
    np.testing.assert_allclose(decoded_levels(load_video(path, 24)), levels, atol=2.5)
    many = load_video(path, 30)  # more than the clip has: frames repeat, count is kept
    assert many.shape[0] == 30
    np.testing.assert_allclose(decoded_levels(many), levels[sample_frame_indices(24, 30)], atol=2.5)


@pytest.mark.parametrize("fps,expected", [
    (1.0, [0, 12, 23]),        # 3 s * 1 fps = 3 frames
    (2.0, [0, 5, 9, 14, 18, 23]),  # 6 frames
    (100.0, [0, 3, 7, 10, 13, 16, 20, 23]),  # cap above num_frames: no effect
    (0.1, [0]),                # floor(0.3) = 0 -> at least one frame
])
def test_fps_cap(ramp_video, fps, expected):
    path, levels = ramp_video
    frames = load_video(path, num_frames=8, fps=fps)
    assert frames.shape[0] == len(expected)
    np.testing.assert_allclose(decoded_levels(frames), levels[expected], atol=2.5)


def test_num_frames_to_sample_formula():
    assert num_frames_to_sample(8, 3.0) == 8
    assert num_frames_to_sample(8, 3.0, fps=1) == 3
    assert num_frames_to_sample(8, 10.0, fps=0.5) == 5
    assert num_frames_to_sample(4, 10.0, fps=0.5) == 4
    assert num_frames_to_sample(8, 0.2, fps=1) == 1


def test_missing_and_corrupt_videos_raise_media_error(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        load_video(tmp_path / "missing.mp4", 4)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError):
        load_video(junk, 4)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError):
        load_video(empty, 4)


def test_truncated_video_raises_media_error(ramp_video, tmp_path):
    path, _ = ramp_video
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError):
        load_video(cut, 8)


@pytest.mark.parametrize("kwargs", [{"num_frames": 0}, {"num_frames": 2.5}, {"num_frames": 4, "fps": 0}])
def test_bad_arguments_raise_value_error(ramp_video, kwargs):
    with pytest.raises(ValueError):
        load_video(ramp_video[0], **kwargs)
