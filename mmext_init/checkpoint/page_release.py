"""Give back the pages of a memory-mapped checkpoint tensor once it is copied.

Pages of a memory-mapped file count in the resident memory (RSS) of every
process that touched them, so copying a whole checkpoint through a map would
hold it twice: in the model and in the map. After a tensor is copied,
:class:`MappedFile` tells the kernel (``madvise(MADV_DONTNEED)``) that this
process no longer needs its pages: they leave this process's RSS and stay in
the shared page cache, where the next rank reading the same file finds them.

Only byte ranges lying wholly inside a mapping of the checkpoint file itself
(found in ``/proc/self/maps``, matched by device and inode) are released, so
anonymous memory is never advised; a later read of a released range faults
the bytes back in from the file. Linux only; elsewhere a no-op.

Example (Linux):
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), 'vit-l.pth')
    >>> torch.save({'w': torch.ones(1024, 256)}, path)   # 1 MiB
    >>> src = torch.load(path, mmap=True)['w']
    >>> dst = torch.empty(1024, 256).copy_(src)
    >>> pages = MappedFile(path)
    >>> pages.release(src), src.sum().item()   # src still reads, from the file
    (True, 262144.0)
"""
import ctypes
import mmap
import os
import sys
from typing import List, Optional, Tuple

import torch

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = getattr(mmap, 'MADV_DONTNEED', 4)
_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        _madvise = libc.madvise
    return _madvise


def file_mappings(path: str) -> List[Tuple[int, int]]:
    """``[(start, end)]`` address ranges of this process mapping ``path``.

    Example:
        >>> file_mappings('no/such/file.pth')
        []
    """
    if not sys.platform.startswith('linux'):
        return []
    try:
        stat = os.stat(path)
        with open('/proc/self/maps') as f:
            lines = f.readlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) < 6 or int(fields[4]) != stat.st_ino:
            continue
        major, minor = (int(x, 16) for x in fields[3].split(':'))
        if os.makedev(major, minor) != stat.st_dev:
            continue
        start, end = (int(x, 16) for x in fields[0].split('-'))
        ranges.append((start, end))
    return ranges


class MappedFile:
    """Releases the pages of tensors read through a map of one file.

    The mappings are looked up on the first :meth:`release` (after the file
    was opened) and again when a tensor lies outside the known ones.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._ranges: Optional[List[Tuple[int, int]]] = None
        self.released = 0  # bytes

    def _inside(self, start: int, end: int) -> bool:
        return any(lo <= start and end <= hi for lo, hi in self._ranges or ())

    def release(self, tensor: torch.Tensor) -> bool:
        """Drop the pages of ``tensor``'s storage from this process's RSS if
        they belong to a mapping of the file; return whether it did."""
        if tensor.device.type != 'cpu' or not sys.platform.startswith(
                'linux'):
            return False
        storage = tensor.untyped_storage()
        start = storage.data_ptr()
        end = start + storage.nbytes()
        if not start or end <= start:
            return False
        if not self._inside(start, end):
            self._ranges = file_mappings(self.path)
            if not self._inside(start, end):
                return False
        first = -(-start // _PAGE) * _PAGE  # whole pages only
        last = end // _PAGE * _PAGE
        if last <= first:
            return False
        if _libc_madvise()(first, last - first, _MADV_DONTNEED) != 0:
            return False
        self.released += last - first
        return True
