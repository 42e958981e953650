"""Pages of a memory-mapped checkpoint tensor leave the process's RSS after
its copy; the values stay readable; anonymous memory is never advised."""
import sys

import pytest
import torch

from mmext_init.checkpoint.formats import open_checkpoint
from mmext_init.checkpoint.page_release import MappedFile, file_mappings

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'),
                                reason='madvise and /proc/self/maps: Linux')


def rss_file_kb() -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f
                    if line.startswith('RssFile:'))


def test_released_pages_leave_rss_and_values_stay(save_ckpt):
    big = torch.randn(16, 2**20)  # 64 MiB
    path = save_ckpt({'big': big, 'small': torch.arange(10.)})
    tensors = open_checkpoint(path)
    src = tensors.get('big')
    assert file_mappings(path), 'the zip checkpoint is read through a map'
    before = rss_file_kb()
    dst = torch.empty_like(src).copy_(src)  # touches every page of the map
    touched = rss_file_kb()
    assert touched - before > 48 * 1024
    pages = MappedFile(path)
    assert pages.release(src)
    assert touched - rss_file_kb() > 48 * 1024
    assert pages.released > 48 * 2**20
    assert torch.equal(src, big) and torch.equal(dst, big)  # read back in
    assert torch.equal(tensors.get('small'), torch.arange(10.))


def test_other_memory_is_never_advised(save_ckpt):
    path = save_ckpt({'w': torch.ones(2**20)})
    pages = MappedFile(path)
    anonymous = torch.full((2**20, ), 3.0)
    assert not pages.release(anonymous)
    assert torch.equal(anonymous, torch.full((2**20, ), 3.0))
    assert pages.released == 0
