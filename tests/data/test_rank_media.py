"""Each SP rank decodes only the frames it encodes, and together the ranks decode exactly the whole batch.

Real decord decoding of a generated H.264 clip (frame i is grey level 10*i, so a frame's mean says which it is).
"""

import numpy as np
import pytest
import torch

from longvila.data.collate import collate
from longvila.errors import MediaError
from longvila.data.image import ImageFile, open_image, pixel_values
from longvila.data.rank_media import RankMedia
from longvila.data.video import VideoClip, load_video, open_video
from longvila.distributed.mmsp import split_frames


class CountingClip(VideoClip):
    """A VideoClip that records which of its sampled frames were decoded."""

    decoded: list

    def frames(self, start, stop):
        self.decoded.extend(range(start, stop))
        return super().frames(start, stop)


def counting(clip):
    out = CountingClip(clip.path, clip.indices)
    object.__setattr__(out, "decoded", [])
    return out


@pytest.fixture
def red_png(tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    return path


def test_open_video_chooses_frames_without_decoding_them(ramp_video):
    path, levels = ramp_video
    clip = open_video(path, 6)
    assert clip.indices == (0, 5, 9, 14, 18, 23)  # round(linspace(0, 23, 6))
    frames = clip.frames(2, 5)
    assert [round(float(f.mean()) / 10) for f in frames] == [9, 14, 18]
    assert np.array_equal(load_video(path, 6), clip.frames(0, 6))
    assert open_video(path, 16, fps=2).num_frames == 6  # 3 s at 2 fps
    with pytest.raises(MediaError, match="not found"):
        open_video(path.with_name("nope.mp4"), 4)


@pytest.mark.parametrize("sp", [1, 2, 3, 4])
def test_ranks_decode_disjoint_shares_that_make_the_whole_batch(ramp_video, red_png, image_processor, sp):
    path, _ = ramp_video
    whole = [pixel_values(image_processor, load_video(path, 7)), pixel_values(image_processor, [open_image(red_png)
                                                                                                 .frames(0, 1)[0]]),
             pixel_values(image_processor, load_video(path, 5))]
    per_rank, decoded = [], []
    for rank in range(sp):
        clips = [counting(open_video(path, 7)), open_image(red_png), counting(open_video(path, 5))]
        out = RankMedia(image_processor, rank, sp)([clips[:2], clips[2:]])
        assert out["media_frames"] == [[7, 1], [5]] and out["media_failed"] == []
        split = split_frames(13, rank, sp)
        mine = out["frames"] if out["frames"].shape[0] else torch.zeros(0, 3, 64, 64)
        assert out["media"] is None and mine.shape[0] == split.num_real  # decoded exactly its share ...
        decoded.append(len(clips[0].decoded) + len(clips[2].decoded))
        per_rank.append(mine)
    torch.testing.assert_close(torch.cat(per_rank), torch.cat(whole), rtol=0, atol=0)  # ... and nothing else
    assert sum(decoded) == 12  # the two clips' 12 frames decoded once over the whole group


class BrokenTail(VideoClip):
    """Opens fine; its frames from ``bad_from`` on cannot be decoded (a stream corrupt past some point)."""

    def frames(self, start, stop):
        if stop > 4:
            raise MediaError(f"cannot decode video {self.path}: corrupt packet")
        return super().frames(start, stop)


def test_a_clip_failing_on_one_rank_names_its_row_there(ramp_video, image_processor):
    path, _ = ramp_video
    clip = open_video(path, 8)
    broken = BrokenTail(clip.path, clip.indices)
    outs = [RankMedia(image_processor, rank, 2)([[open_video(path, 2)], [broken]]) for rank in range(2)]
    assert outs[0]["media_failed"] == []  # rank 0 decodes the first clip and frames 0-2 of the broken one
    assert outs[1]["media_failed"] == [1]  # rank 1's share of the broken clip is past the corruption


def test_collate_with_rank_media_adds_counts_and_decode_time(ramp_video, image_processor):
    path, _ = ramp_video
    sample = {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]),
              "media": [open_video(path, 4)]}
    batch = collate([sample, sample], pad_token_id=0, rank_media=RankMedia(image_processor, 1, 2))
    assert batch["media_frames"] == [[4], [4]] and batch["decode_seconds"] >= 0
    assert batch["frames"].shape == (4, 3, 64, 64)  # rank 1 of 2 encodes frames 4-7 of the batch: the 2nd clip


def test_image_file_opens_lazily_and_fails_on_a_bad_file(tmp_path, red_png):
    assert open_image(red_png) == ImageFile(str(red_png))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(MediaError, match="cannot decode image"):
        open_image(bad)
