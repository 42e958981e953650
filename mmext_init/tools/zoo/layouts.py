"""Layouts of generated zoo checkpoint files (no mmext_init import: the
stock worker uses it).

A file is made from a module of a stock build: its state dict with seeded
random floats (``random_state``, distinct from any constructor init), laid
out as the file on the zoo would be (``candidate_layouts``):

- ``plain``: the module's own keys in ``state_dict`` (OpenMMLab's converted
  files: ``open-mmlab://resnet50_v1c``, mmseg's MiT/Swin/ViT pretrain files);
- ``bare``: the same keys, the file being the state dict itself (mmseg's
  PIDNet loads the file's top level);
- ``prefix:P``: every key prefixed with ``P`` (``Pretrained(prefix=P)``;
  ``backbone.`` also for ``mmcls://`` files, whose other keys stock drops,
  and for mmdet's Swin, which keeps only ``backbone.`` keys);
- ``torchvision``: the named torchvision model's own state dict (its keys,
  ``fc.*`` included);
- ``original``: the layout of the original repository, for a backbone built
  with ``convert_weights=True`` (mmdet's ``SwinTransformer``,
  ``PyramidVisionTransformer``): the inverse of the backbone's converter, so
  the backbone's own conversion runs on it.

Which layout stock's loading code expects is found by trying them in order
(:mod:`~mmext_init.tools.zoo.files`); ``expected`` is what each module key should hold after a
load.

Example:
    >>> import torch.nn as nn
    >>> state = random_state(nn.BatchNorm1d(2), 'https://x/bn.pth')
    >>> sorted(state), bool((state['running_var'] > 0).all())
    (['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight'], True)
"""
import re
import zlib
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

State = Dict[str, torch.Tensor]
Layout = Tuple[str, Any, State]  # (label, object to torch.save, expected)


def random_state(module: nn.Module, url: str) -> State:
    """The module's state dict with every float tensor replaced by values
    drawn from a generator seeded by ``url`` (``randn * 0.02``; running
    variances in [0.5, 1.5)); other tensors (indices, counters) kept."""
    gen = torch.Generator().manual_seed(zlib.crc32(url.encode()))
    out: State = OrderedDict()
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            out[key] = value.detach().clone()
        elif key.endswith('running_var'):
            out[key] = (torch.rand(value.shape, generator=gen) + 0.5).to(
                value.dtype)
        else:
            out[key] = (torch.randn(value.shape, generator=gen) * 0.02).to(
                value.dtype)
    return out


def floats(state: State) -> State:
    """The float tensors of ``state`` (what a load is recognized by)."""
    return OrderedDict((k, v) for k, v in state.items()
                       if v.is_floating_point())


def candidate_layouts(name: str, url: str, module: nn.Module, state: State,
                      prefix: Optional[str]) -> List[Layout]:
    """Layouts to try, most specific first (see the module docstring)."""
    labels: List[str] = []
    if prefix:
        labels.append(f'prefix:{prefix}')
    if name.startswith('mmcls://'):
        labels.append('prefix:backbone.')
    if name.startswith(('torchvision://', 'modelzoo://')):
        labels.append('torchvision')
    if getattr(module, 'convert_weights', False) and \
            type(module).__name__ in ORIGINAL_LAYOUTS:
        labels.append('original')
    labels += ['plain', 'prefix:backbone.', 'bare']
    out: List[Layout] = []
    for label in dict.fromkeys(labels):
        made = _make(label, name, url, module, state)
        if made is not None:
            out.append((label, ) + made)
    return out


def _make(label: str, name: str, url: str, module: nn.Module,
          state: State) -> Optional[Tuple[Any, State]]:
    expected = floats(state)
    if label == 'plain':
        return {'state_dict': state}, expected
    if label == 'bare':  # the state dict itself (PIDNet reads it so)
        return OrderedDict(state), expected
    if label.startswith('prefix:'):
        p = label[len('prefix:'):]
        return {'state_dict': OrderedDict((p + k, v)
                                          for k, v in state.items())}, expected
    if label == 'original':
        convert = ORIGINAL_LAYOUTS[type(module).__name__]
        return {'state_dict': convert(state)}, expected
    return _torchvision(name, url, state)


def _torchvision(name: str, url: str, state: State
                 ) -> Optional[Tuple[Any, State]]:
    # torchvision is optional for the sweep (imported only for these names)
    import torchvision
    arch = name.split('://', 1)[1].split('.')[0]
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except (ValueError, KeyError):  # not a torchvision builder name
        return None
    theirs = random_state(model, url)
    expected = OrderedDict(
        (k, theirs[k]) for k, v in state.items()
        if v.is_floating_point() and k in theirs and theirs[k].shape == v.shape)
    return theirs, expected


def swin_original(state: State) -> State:
    """The original Swin layout whose mmdet ``swin_converter`` gives
    ``state`` (the inverse of its key renames and of its unfold-order
    corrections of ``downsample.reduction``/``downsample.norm``)."""
    out: State = OrderedDict()
    for k, v in state.items():
        if k.startswith('stages.'):
            k = 'layers.' + k[len('stages.'):]
            k = k.replace('attn.w_msa.', 'attn.')
            k = k.replace('ffn.layers.0.0.', 'mlp.fc1.')
            k = k.replace('ffn.layers.1.', 'mlp.fc2.').replace('ffn.', 'mlp.')
            if 'downsample.reduction.' in k and v.dim() == 2:
                o, i = v.shape
                v = v.reshape(o, i // 4, 4).transpose(1, 2)[:, [0, 2, 1, 3]]
                v = v.reshape(o, i)
            elif 'downsample.norm.' in k:
                v = v.reshape(-1, 4).transpose(0, 1)[[0, 2, 1, 3]].reshape(-1)
        elif k.startswith('patch_embed.'):
            k = k.replace('projection', 'proj')
        out[k] = v.contiguous()
    return out


_PVT_FFN = {'0': 'fc1', '1': 'dwconv.dwconv', '3': 'fc2', '4': 'fc2'}


def pvt_original(state: State) -> State:
    """The original PVT layout whose mmdet ``pvt_convert`` gives ``state``
    (stage modules renamed back, ``in_proj`` split into ``q``/``kv``, 1x1
    convs of the FFN back to linear weights)."""
    abs_pos = any(k.endswith('.pos_embed') for k in state)
    out: State = OrderedDict()
    for k, v in state.items():
        m = re.match(r'layers\.(\d+)\.(\d)\.(.*)', k)
        if m is None:
            out[k] = v
            continue
        stage, part, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
        if part == '0':
            out[f'patch_embed{stage}.' + rest.replace('projection.', 'proj.')
                ] = v
        elif part == '2':
            out[f'norm{stage}.{rest}'] = v
        elif rest == '0.pos_embed' and abs_pos:
            out[f'pos_embed{stage}'] = v
        else:
            index, rest = rest.split('.', 1)
            _pvt_block(out, f'block{stage}.{int(index) - abs_pos}.', rest, v)
    return out


def _pvt_block(out: State, head: str, rest: str, v: torch.Tensor) -> None:
    if rest.startswith('attn.attn.in_proj_'):
        kind = rest[len('attn.attn.in_proj_'):]
        dim = v.shape[0] // 3
        out[f'{head}attn.q.{kind}'] = v[:dim].clone()
        out[f'{head}attn.kv.{kind}'] = v[dim:].clone()
    elif rest.startswith('attn.attn.out_proj.'):
        out[head + 'attn.proj.' + rest[len('attn.attn.out_proj.'):]] = v
    elif rest.startswith('ffn.layers.'):
        index, kind = rest[len('ffn.layers.'):].split('.', 1)
        name = _PVT_FFN[index]
        if name != 'dwconv.dwconv' and kind == 'weight':
            v = v.reshape(v.shape[:2])
        out[f'{head}mlp.{name}.{kind}'] = v
    else:
        out[head + rest] = v


ORIGINAL_LAYOUTS: Dict[str, Callable[[State], State]] = {
    'SwinTransformer': swin_original,
    'PyramidVisionTransformer': pvt_original,
    'PyramidVisionTransformerV2': pvt_original,
}
