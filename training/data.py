"""Training images straight from the Zarr clip store: every (clip, frame) crop, in a chunk-friendly random order.

The store keeps crops in chunks of 16 frames (Blosc zstd), and reading one frame decodes its whole chunk. So:

- `StoreCrops` (a map-style Dataset, so torch's DataLoader and DistributedSampler take it) decodes a chunk once,
  resizes its frames to the training resolution, and keeps the last `cache_chunks` chunks per process; its
  `__getitems__` serves a whole batch with one decode per chunk it touches.
- `ChunkShuffleSampler` orders each epoch so that those decodes are shared: it shuffles the chunks, deals them out
  to the ranks, and shuffles the frames of every `block` consecutive chunks together, so a batch mixes frames of
  about `block` clips and each chunk is decoded about once per epoch. Its order is a pure function of (seed, epoch,
  rank), and it can start at any sample, which is how a resumed run sees exactly the data it would have seen.

Items are uint8 [3, R, R] tensors (small to move between processes); `to_model_range` makes the float images in
[-1, 1] that the networks read, on the training device.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from storage.store import ClipKey, ClipReader, ClipStore


class StoreCrops(Dataset):
    """The crops of a store's clips (all, or `clips`), resized to `resolution`; optionally only frames with a face."""

    def __init__(self, store: str | os.PathLike, resolution: int, clips: Sequence[str] | None = None,
                 faces_only: bool = True, cache_chunks: int = 32):
        self.root = str(store)
        self.resolution = resolution
        self.cache_chunks = cache_chunks
        clip_store = ClipStore.open(self.root, create=False)
        self.keys = [ClipKey.parse(text) for text in clips] if clips else clip_store.clips()
        if not self.keys:
            raise ValueError(f"the store {clip_store.root} has no clips to train on (run preprocess-dataset first)")
        rows, self.chunk_frames = [], []
        for number, key in enumerate(self.keys):
            clip = clip_store.clip(key)
            frames = np.arange(len(clip))
            if faces_only and "has_face" in clip.arrays:
                frames = frames[clip["has_face"][:].astype(bool)]
            self.chunk_frames.append(int(clip.crops.chunks[0]))
            rows.append(np.stack([np.full(len(frames), number), frames], axis=1))
        self.items = np.concatenate(rows).astype(np.int64)  # [N, 2]: clip number, frame
        if not len(self.items):
            raise ValueError(f"no frame with a face in the {len(self.keys)} clips of {clip_store.root}")
        chunk_size = np.asarray(self.chunk_frames)[self.items[:, 0]]
        chunk = self.items[:, 1] // chunk_size
        # one id per (clip, chunk), in store order
        self.chunk_ids = np.unique(np.stack([self.items[:, 0], chunk], axis=1), axis=0, return_inverse=True)[1]
        self.chunk_ids = self.chunk_ids.reshape(-1)
        self._readers: dict[int, ClipReader] = {}
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        """What a spawned DataLoader worker receives: the index, not this process's open arrays or cache."""
        return {**self.__dict__, "_readers": {}, "_cache": OrderedDict()}

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """A batch of items; each chunk they need is decoded (and resized) once."""
        out = []
        for index in indices:
            number, frame = (int(v) for v in self.items[index])
            size = self.chunk_frames[number]
            out.append(self._chunk(number, frame // size)[frame % size])
        return out

    def _chunk(self, number: int, chunk: int) -> torch.Tensor:
        """uint8 [frames of the chunk, 3, R, R], from this process's cache or decoded now."""
        if os.getpid() != self._pid:  # a DataLoader worker: zarr handles are not shared across a fork
            self._readers, self._cache, self._pid = {}, OrderedDict(), os.getpid()
        key = (number, chunk)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        reader = self._readers.get(number)
        if reader is None:
            reader = self._readers[number] = ClipStore.open(self.root, create=False).clip(self.keys[number])
        size = self.chunk_frames[number]
        pixels = torch.from_numpy(np.ascontiguousarray(reader.crops[chunk * size:(chunk + 1) * size]))
        frames = resize_pixels(pixels.permute(0, 3, 1, 2), self.resolution)
        self._cache[key] = frames
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return frames


def resize_pixels(pixels: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> uint8 [B, 3, R, R]: antialiased bilinear (an area-like filter when shrinking)."""
    if pixels.shape[-2:] == (resolution, resolution):
        return pixels.contiguous()
    resized = F.interpolate(pixels.float(), (resolution, resolution), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def to_model_range(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, 3, R, R] -> float32 in [-1, 1] on `device` (converted there)."""
    return to_device(batch, device).float() / 127.5 - 1


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device` without waiting for it: on a GPU the copy goes through pinned memory, so it is
    queued behind the device's work (a copy from pageable memory first waits for the device to finish)."""
    if device.type == "cuda" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class ChunkShuffleSampler(Sampler[int]):
    """An endless, seeded, rank-sharded order of item indices that decodes each chunk about once per epoch.

    Epoch e: the chunks in a random order (seeded by seed and e), dealt to the ranks in turn; each rank yields its
    chunks' frames block by block, `block` chunks per block, the block's frames shuffled. `block=0` shuffles all of
    the rank's frames at once. With fewer chunks than ranks, frames are dealt instead. `start` skips that many
    samples of this rank's stream (a resumed run passes step * batch size).
    """

    def __init__(self, chunk_ids: np.ndarray, seed: int, rank: int = 0, world_size: int = 1, block: int = 8,
                 start: int = 0):
        self.chunk_ids = np.asarray(chunk_ids)
        self.seed, self.rank, self.world_size, self.block, self.start = seed, rank, world_size, block, start
        self.chunk_count = int(self.chunk_ids.max()) + 1
        order = np.argsort(self.chunk_ids, kind="stable")
        bounds = np.searchsorted(self.chunk_ids[order], np.arange(self.chunk_count + 1))
        self.members = [order[bounds[c]:bounds[c + 1]] for c in range(self.chunk_count)]

    def epoch(self, epoch: int) -> np.ndarray:
        """This rank's item indices of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.chunk_count < self.world_size:
            frames = rng.permutation(len(self.chunk_ids))
            return frames[self.rank::self.world_size]
        mine = rng.permutation(self.chunk_count)[self.rank::self.world_size]
        block = self.block or len(mine)
        parts = []
        for first in range(0, len(mine), block):
            frames = np.concatenate([self.members[c] for c in mine[first:first + block]])
            parts.append(rng.permutation(frames))
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[int]:
        skip, epoch = self.start, 0
        while True:
            indices = self.epoch(epoch)
            if skip >= len(indices):  # whole epochs before the start
                skip -= len(indices)
            else:
                yield from (int(i) for i in indices[skip:])
                skip = 0
            epoch += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for its own length, which the loop never asks
        return 2**62


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker resizes a chunk at a time; the training process has the cores


def crop_batches(dataset: StoreCrops, batch_size: int, seed: int, rank: int, world_size: int, block: int,
                 workers: int, start_step: int, pin_memory: bool) -> Iterator[torch.Tensor]:
    """Endless uint8 batches [B, 3, R, R] of this rank, from step `start_step` of the seeded order."""
    sampler = ChunkShuffleSampler(dataset.chunk_ids, seed, rank, world_size, block, start=start_step * batch_size)
    # the loader draws its workers' base seed from its own generator, not from the training's torch stream
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=pin_memory, worker_init_fn=_worker_init if workers else None,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                        generator=torch.Generator().manual_seed(seed))
    return iter(loader)
