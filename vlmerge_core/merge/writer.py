"""A safetensors file written tensor by tensor while a merge runs: the bytes of ``io.save_safetensors``.

``io.save_safetensors`` needs every tensor at once, so a merge that used it held its whole output
(1.2x the output in peak RSS) and wrote it only after the last group was merged. Here the layout
is planned up front from ``{name: (dtype, shape)}`` (known from the MS header before anything is
merged), and each merged tensor goes to its place in the file as soon as it is made, written by a
thread while the next group is merged, then freed.

The layout is ``io.save_safetensors``'s, from the same function (``io.safetensors_layout``);
``tests/merge/test_merge_writer.py`` holds the two to the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vlmerge_core.io import atomic_path, safetensors_layout

__all__ = ["SafetensorsStream", "streamed_safetensors"]

Specs = Mapping[str, tuple[torch.dtype, Sequence[int]]]
QUEUE_BYTES = 64 << 20  # merged tensors waiting for the writer thread, at most (one larger alone)
SYNC_BYTES = 64 << 20  # the writer thread starts the disk writeback every 64 MiB: the final fsync of
# the atomic rename then has little left to wait for


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _start_writeback(fd: int) -> None:
    """Have the kernel start writing the file's dirty pages to disk, without waiting for it (Linux:
    ``fadvise(DONTNEED)`` starts the writeback and leaves dirty pages in memory); where that is not
    available, wait for it (``fdatasync``). Waiting here stalled the merge behind the disk."""
    if hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    else:
        os.fdatasync(fd)


class SafetensorsStream:
    """The file being written by :func:`streamed_safetensors`; ``put`` its tensors in any order."""

    def __init__(self, path: Path, fd: int, specs: Specs, offsets: Mapping[str, int]) -> None:
        self.path, self._fd, self._specs, self._offsets = path, fd, specs, offsets
        self._left = set(offsets)
        self._queue: queue.Queue = queue.Queue()  # tensors waiting for the writer thread
        self._budget = threading.Condition()  # put() waits while QUEUE_BYTES are already queued
        self._queued = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_loop, name="safetensors-writer", daemon=True)
        self._thread.start()

    def put(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` for its place in the file; a thread writes it while the caller goes on."""
        if name not in self._specs:
            raise ValueError(f"{self.path}: tensor {name!r} is not in the planned layout")
        if name not in self._left:
            raise ValueError(f"{self.path}: tensor {name!r} given twice")
        dtype, shape = self._specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"{self.path}: tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, "
                f"the layout planned {dtype} {tuple(shape)}"
            )
        self._raise_if_failed()
        self._left.discard(name)
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        size = flat.numel() * flat.element_size()
        with self._budget:  # a tensor larger than the budget still goes, alone
            while self._queued and self._queued + size > QUEUE_BYTES and self._error is None:
                self._budget.wait()
            self._queued += size
        self._queue.put((self._offsets[name], flat, size))

    def _write_loop(self) -> None:
        unsynced = 0
        while (item := self._queue.get()) is not None:
            offset, t, size = item
            try:
                if self._error is None:  # else drain: the caller learns of it at its next put or close
                    if size:
                        _pwrite_all(self._fd, t.view(torch.uint8).numpy(), offset)
                    unsynced += size
                    if unsynced >= SYNC_BYTES:  # start writing back to disk, while the caller merges on
                        _start_writeback(self._fd)
                        unsynced = 0
            except BaseException as exc:  # noqa: BLE001 - handed over to the caller's thread
                self._error = exc
            finally:
                del t
                with self._budget:
                    self._queued -= size
                    self._budget.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise OSError(f"{self.path}: writing failed ({self._error})") from self._error

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Wait for the writer; raise if it failed or if a planned tensor was never put."""
        self._stop()
        self._raise_if_failed()
        if self._left:
            raise ValueError(
                f"{self.path}: {len(self._left)} planned tensors never written, e.g. {sorted(self._left)[0]!r}"
            )


@contextlib.contextmanager
def streamed_safetensors(
    path: str | Path, specs: Specs, metadata: Mapping[str, Any] | None = None
) -> Iterator[SafetensorsStream]:
    """Write the safetensors file ``path`` of tensors ``specs`` (``{name: (dtype, shape)}``) tensor by
    tensor, atomically: the bytes ``io.save_safetensors`` writes for the same tensors.

    On an exception in the block, or when a planned tensor was never put, the temporary file is
    removed and ``path`` is left as it was.
    """
    head, offsets = safetensors_layout(path, specs, metadata)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        stream = None
        try:
            _pwrite_all(fd, head, 0)
            stream = SafetensorsStream(Path(path), fd, specs, offsets)
            yield stream
            stream.close()
        finally:
            if stream is not None:
                stream._stop()
            os.close(fd)
