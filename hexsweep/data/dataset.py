"""The memory-mapped dataset: N parallel jobs share one copy of the shards in the page cache.

Shards are opened with ``np.load(mmap_mode="r")``; a batch copies only its own rows out of
the mapping. No torch DataLoader: gathering a batch from a memmap is microseconds, and
DataLoader worker processes break inside loky workers (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hexsweep.data.shards import FIELDS, load_split, read_meta


class HexDataset:
    """One split of a dataset folder, read-only and memory-mapped."""

    def __init__(self, folder: str | Path, split: str, board_size: int | None = None) -> None:
        self.folder = Path(folder)
        self.meta = read_meta(self.folder, board_size)
        self.split = split
        self.board_size: int = self.meta["board_size"]
        self._fields = load_split(self.folder, self.meta, split)
        lengths = [len(m) for m in self._fields["move"]]
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``indices`` of every field, as in-memory arrays, in the order given."""
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        shard_of = np.searchsorted(self._offsets, sorted_idx, side="right") - 1
        out = {}
        for key in FIELDS:
            parts = []
            for s in np.unique(shard_of):
                local = sorted_idx[shard_of == s] - self._offsets[s]
                parts.append(self._fields[key][s][local])
            gathered = np.concatenate(parts) if len(parts) > 1 else parts[0]
            restored = np.empty_like(gathered)
            restored[order] = gathered
            out[key] = restored
        return out

    def field(self, key: str) -> np.ndarray:
        """A whole field as one in-memory array (copies; for analysis and tests)."""
        return np.concatenate([np.asarray(a) for a in self._fields[key]])

    def batches(
        self, batch_size: int, shuffle: bool, rng: np.random.Generator | None = None,
        max_batches: int | None = None, skip: int = 0,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches as torch tensors: boards/to_move int8, move int64 (-1: none), value float32.
        ``skip``: leave out the first batches of this order (a resumed epoch), without reading them."""
        n = len(self)
        order = rng.permutation(n) if shuffle and rng is not None else np.arange(n)
        for count, start in enumerate(range(0, n, batch_size)):
            if max_batches is not None and count >= max_batches:
                return
            if count < skip:
                continue
            rows = self.gather(order[start : start + batch_size])
            yield {
                "boards": torch.from_numpy(rows["boards"]),
                "to_move": torch.from_numpy(rows["to_move"]),
                "move": torch.from_numpy(rows["move"].astype(np.int64)),
                "value": torch.from_numpy(rows["value"].astype(np.float32)),
            }

    def num_batches(self, batch_size: int, max_batches: int | None = None) -> int:
        count = -(-len(self) // batch_size)
        return min(count, max_batches) if max_batches is not None else count
