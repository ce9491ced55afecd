"""The training data: crops read from the Zarr store by chunk, and the seeded, resumable, rank-sharded order."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

import training.data as data
from tests.training import numbered_frames, write_store
from training.data import ChunkShuffleSampler, StoreCrops, crop_batches, to_model_range

FRAMES, CHUNK = 20, 8  # chunks of 8, 8 and 4 frames per clip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    has_face = np.ones(FRAMES, bool)
    has_face[[3, 11]] = False
    return write_store(tmp_path_factory.mktemp("data") / "d.zarr", numbered_frames(FRAMES, 16), clips=3,
                       chunk_frames=CHUNK, has_face=has_face)


def frame_values(items) -> list[int]:
    """The constant each numbered crop holds (2 * frame + 1 + 3 * clip)."""
    return [int(item[0, 0, 0]) for item in items]


def test_items_are_the_frames_with_a_face_resized(store):
    dataset = StoreCrops(store.root, resolution=8)
    assert len(dataset) == 3 * (FRAMES - 2)
    assert dataset.items[:4].tolist() == [[0, 0], [0, 1], [0, 2], [0, 4]]  # frame 3 has no face
    items = dataset.__getitems__([0, 3, 18 + 4])  # clip 0 frames 0 and 4; clip 1 frame 5
    assert all(item.shape == (3, 8, 8) and item.dtype == torch.uint8 for item in items)
    assert frame_values(items) == [1, 9, 2 * 5 + 1 + 3]
    assert len(StoreCrops(store.root, 8, faces_only=False)) == 3 * FRAMES
    assert len(StoreCrops(store.root, 8, clips=["id01/video/00001"])) == FRAMES - 2
    images = to_model_range(torch.stack(items), torch.device("cpu"))
    assert images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1


def test_an_epoch_decodes_each_chunk_once(store, monkeypatch):
    decodes = []
    original = data.resize_pixels
    monkeypatch.setattr(data, "resize_pixels",
                        lambda pixels, size: decodes.append(len(pixels)) or original(pixels, size))
    dataset = StoreCrops(store.root, resolution=8, cache_chunks=4)
    sampler = ChunkShuffleSampler(dataset.chunk_ids, seed=0, block=4)
    epoch = sampler.epoch(0)
    for start in range(0, len(epoch), 6):
        dataset.__getitems__(epoch[start:start + 6].tolist())
    assert len(decodes) == 9 == dataset.chunk_ids.max() + 1  # 3 clips x 3 chunks, each decoded once


def test_order_is_a_seeded_permutation_per_epoch_sharded_by_rank(store):
    chunk_ids = StoreCrops(store.root, 8).chunk_ids
    ranks = [ChunkShuffleSampler(chunk_ids, seed=5, rank=rank, world_size=2, block=2) for rank in range(2)]
    for epoch in range(2):
        shards = [sampler.epoch(epoch) for sampler in ranks]
        assert not set(shards[0]) & set(shards[1])  # disjoint, whole chunks per rank
        assert sorted(np.concatenate(shards)) == list(range(len(chunk_ids)))
        assert {len(set(chunk_ids[s])) for s in shards} <= {4, 5}  # 9 chunks dealt in turn
    assert not np.array_equal(ranks[0].epoch(0), ranks[0].epoch(1))
    assert np.array_equal(ranks[0].epoch(0), ChunkShuffleSampler(chunk_ids, 5, 0, 2, 2).epoch(0))



def test_a_block_mixes_the_frames_of_a_few_chunks_only(store):
    """With `block` chunks per block, a chunk's frames lie within block * 8 consecutive positions of the epoch."""
    chunk_ids = StoreCrops(store.root, 8).chunk_ids

    def widest_span(order: np.ndarray) -> int:
        return max(np.ptp(np.flatnonzero(chunk_ids[order] == chunk)) + 1 for chunk in np.unique(chunk_ids))

    assert widest_span(ChunkShuffleSampler(chunk_ids, seed=1, block=1).epoch(0)) <= CHUNK
    assert widest_span(ChunkShuffleSampler(chunk_ids, seed=1, block=2).epoch(0)) <= 2 * CHUNK
    assert widest_span(ChunkShuffleSampler(chunk_ids, seed=1, block=0).epoch(0)) > 2 * CHUNK  # all frames mixed


def test_a_stream_started_later_is_the_same_stream(store):
    chunk_ids = StoreCrops(store.root, 8).chunk_ids
    whole = list(islice(iter(ChunkShuffleSampler(chunk_ids, seed=3, block=3)), 200))  # over 3 epochs
    for start in (0, 7, 54, 130):
        later = list(islice(iter(ChunkShuffleSampler(chunk_ids, seed=3, block=3, start=start)), 200 - start))
        assert later == whole[start:]


def test_loader_batches_do_not_depend_on_the_worker_count(store):
    dataset = StoreCrops(store.root, resolution=8)
    runs = []
    for workers in (0, 2):
        batches = crop_batches(dataset, batch_size=5, seed=2, rank=0, world_size=1, block=2, workers=workers,
                               start_step=3, pin_memory=False)
        runs.append([frame_values(batch) for batch in islice(batches, 4)])
        del batches
    assert runs[0] == runs[1]
    order = ChunkShuffleSampler(dataset.chunk_ids, seed=2, block=2, start=15)
    expected = frame_values(dataset.__getitems__(list(islice(iter(order), 20))))
    assert sum(runs[0], []) == expected
