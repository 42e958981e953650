"""Structural checks of a zip ``.pth`` before torch reads it.

torch's zip reader verifies no CRC-32 and trusts the local headers, so a
damaged ``data.pkl`` reaches the unpickler (and fails in odd places, e.g.
``LookupError: unknown encoding``) or, worse, tensors are rebuilt from
shifted bytes. :func:`verify_torch_zip` checks, reading the central
directory with Python's ``zipfile`` and each local header itself:

* every record's local header has the right signature and name, its data
  lies inside the file, and tensor data is stored uncompressed;
* tensor data records start on the storage alignment (the
  ``.storage_alignment`` record, else 64 bytes: torch's writer pads every
  record to it) when the file's other tensor records do: a damaged
  extra-field length would make torch read a tensor from shifted bytes;
* the CRC-32 of every record except the tensor data (``data.pkl``,
  ``byteorder``, versions: a few KB), when the writer computed one
  (``torch.serialization.config.save.compute_crc32``, on by default).

Tensor data is not read: its CRC-32 would need the whole file, while a
module copies only the tensors it needs. A damaged byte inside tensor data
is therefore not detected here (NaN/Inf are, by ``check_finite``).

Example:
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), 'w.pth')
    >>> torch.save({'w': torch.ones(2)}, path)
    >>> is_torch_zip(path), verify_torch_zip(path, 'checkpoint')
    (True, None)
"""
import os
import re
import struct
import zipfile
import zlib
from typing import BinaryIO, Dict, List

from ..errors import CheckpointError

__all__ = ['is_torch_zip', 'verify_torch_zip']

_LOCAL_MAGIC = b'PK\x03\x04'
_LOCAL_HEADER = struct.Struct('<4s22xHH')  # signature, name/extra lengths
_TENSOR_DATA = re.compile(r'(^|/)data/\d+$')
_ALIGNMENT = re.compile(r'(^|/)\.storage_alignment$')
# what zipfile raises on a damaged archive (zlib.error: damaged compressed
# data, as in TorchScript archives' code records)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError,
               OSError, EOFError, KeyError, IndexError, struct.error,
               OverflowError, NotImplementedError, RuntimeError, zlib.error)


class _Damaged(Exception):
    """A damaged record (internal: becomes a CheckpointError)."""


def is_torch_zip(path: str) -> bool:
    """Whether ``path`` starts like a zip archive (torch's own test: the
    first local header's signature, wherever the central directory is)."""
    with open(path, 'rb') as f:
        return f.read(4) == _LOCAL_MAGIC


def verify_torch_zip(path: str, label: str) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and the damaged record
    if the zip structure or a small record of a torch zip file is damaged.

    Example (one byte of ``data.pkl`` changed):
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), 'bad.pth')
        >>> torch.save({'w': torch.ones(2)}, path)
        >>> with open(path, 'r+b') as f:
        ...     _ = f.seek(f.read().index(b'_rebuild_tensor'))
        ...     _ = f.write(b'X')
        >>> verify_torch_zip(path, 'checkpoint')  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mmext_init.errors.CheckpointError: checkpoint: cannot read checkpoint .../bad.pth: the zip structure is damaged (record bad/data.pkl: BadZipFile: Bad CRC-32 for file 'bad/data.pkl'); the file is truncated or corrupt, write or download it again
    """
    record = '(central directory)'
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive, open(path, 'rb') as f:
            starts: Dict[str, int] = {}
            for info in archive.infolist():
                record = info.filename
                starts[record] = _check_record(archive, f, info, size)
            record = '(tensor data)'
            _check_alignment(f, archive.infolist(), starts)
    except (_Damaged, *_ZIP_ERRORS) as exc:
        what = str(exc) if isinstance(exc, _Damaged) else \
            f'{type(exc).__name__}: {exc}'
        raise CheckpointError(
            f'{label}: cannot read checkpoint {path}: the zip structure is '
            f'damaged (record {record}: {what}); the file is truncated or '
            'corrupt, write or download it again') from exc


def _check_record(archive: zipfile.ZipFile, f: BinaryIO,
                  info: zipfile.ZipInfo, size: int) -> int:
    """Check one record (see the module docstring); return where its data
    starts."""
    tensor_data = bool(_TENSOR_DATA.search(info.filename))
    if tensor_data and info.compress_type != zipfile.ZIP_STORED:
        raise _Damaged(f'compression method {info.compress_type}; torch '
                       'stores tensor data uncompressed')
    f.seek(info.header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size:
        raise _Damaged('local header past the end of the file')
    magic, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
    name = f.read(name_len)
    encoding = 'utf-8' if info.flag_bits & 0x800 else 'cp437'  # as zipfile
    if magic != _LOCAL_MAGIC or name != info.orig_filename.encode(encoding):
        raise _Damaged(f'local header {magic!r} {name!r} does not match the '
                       'central directory')
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + info.compress_size > size:
        raise _Damaged(f'data ends at byte {start + info.compress_size}, '
                       f'after the end of the file ({size} bytes)')
    if info.CRC and not tensor_data:  # CRC 0: written with compute_crc32 off
        with archive.open(info) as handle:  # raises on a CRC-32 mismatch
            while handle.read(1 << 20):
                pass
    return start


def _check_alignment(f: BinaryIO, infos: List[zipfile.ZipInfo],
                     starts: Dict[str, int]) -> None:
    """Tensor data records start on the storage alignment, if any does."""
    alignment = 64
    for info in infos:
        if _ALIGNMENT.search(info.filename):
            f.seek(starts[info.filename])
            text = f.read(min(info.compress_size, 20))
            alignment = int(text) if text.isdigit() and int(text) else 0
            if not alignment:
                raise _Damaged(f'storage alignment {text!r}')
    tensors = [i.filename for i in infos if _TENSOR_DATA.search(i.filename)]
    aligned = [name for name in tensors if starts[name] % alignment == 0]
    if aligned and len(aligned) < len(tensors):
        name = next(n for n in tensors if n not in aligned)
        raise _Damaged(f'{name} starts at byte {starts[name]}, off the '
                       f'{alignment}-byte alignment of the other tensors '
                       '(a damaged local header)')
