"""The trainable report's per-entry block and totals: per ``insert`` entry
(``insert[0] LoRA(rank=4, alpha=8)``) its tensors, parameters and share of
the model's parameters, and whether they train; then the totals, which are
PEFT's ``get_nb_trainable_parameters`` of the same model, printed as its
``print_trainable_parameters`` prints them. The block comes after the
lines the report had before (its first lines are unchanged)."""
from typing import Tuple

import pytest
import torch.distributed.tensor  # noqa: F401  (PEFT reads it, unimported)
import torch.nn as nn
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from peft import LoraConfig, get_peft_model

from mmext_init import ProvenanceOptimWrapperConstructor
from mmext_init.inserting.insert import Inserted
from mmext_init.provenance.inserted import parse_note
from mmext_init.training.report import format_trainable, report_data

VIT = dict(type='VisionTransformer', img_size=32, patch_size=8,
           arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                     feedforward_channels=64))
INSERT = [dict(type='LoRA', targets=r'backbone\.layers\.\d+\.attn\.qkv',
               rank=4, alpha=8),
          dict(type='LoRA', targets=r'backbone\.layers\.\d+\.attn\.proj',
               rank=2)]
LABELS = ['insert[0] LoRA(rank=4, alpha=8)', 'insert[1] LoRA(rank=2)']
PARTS = ['.attn.qkv.lora_', '.attn.proj.lora_']
FREEZE_PROJ = ['loaded', dict(name=r'.*\.attn\.proj\.lora_.*')]


def classifier(save_ckpt, insert=INSERT) -> nn.Module:
    """mmpretrain's ViT classifier, the backbone from a checkpoint, a new
    head, ``insert`` from the config."""
    init_default_scope('mmpretrain')
    backbone = MODELS.build(VIT)
    backbone.init_weights()
    ckpt = save_ckpt({f'backbone.{k}': v
                      for k, v in backbone.state_dict().items()})
    cfg = dict(type='ImageClassifier', backbone=dict(VIT, init_cfg=dict(
        type='Pretrained', checkpoint=ckpt, prefix='backbone.')),
        head=dict(type='VisionTransformerClsHead', num_classes=4,
                  in_channels=32, loss=dict(type='CrossEntropyLoss')))
    return MODELS.build(dict(cfg, insert=insert) if insert else cfg)


def report(model: nn.Module, freeze) -> Tuple[dict, str]:
    ctor = ProvenanceOptimWrapperConstructor(
        dict(optimizer=dict(type='SGD', lr=0.1)), dict(freeze=freeze))
    optimizer = ctor(model).optimizer
    data = report_data(type(model).__name__, ctor.plan(model), optimizer)
    return data, format_trainable(data)


def peft_twin(frozen_proj: bool) -> nn.Module:
    """PEFT's LoRA on the same layers (rank 4 on qkv, 2 on proj), the new
    head trainable as ours is, the proj LoRA frozen if ``frozen_proj``."""
    init_default_scope('mmpretrain')
    plain = MODELS.build(dict(type='ImageClassifier', backbone=VIT, head=dict(
        type='VisionTransformerClsHead', num_classes=4, in_channels=32)))
    model = get_peft_model(plain, LoraConfig(
        r=4, lora_alpha=8, target_modules=r'.*\.attn\.(qkv|proj)',
        rank_pattern={'proj': 2}, alpha_pattern={'proj': 2}))
    for name, param in model.named_parameters():
        if name.startswith('base_model.model.head.'):
            param.requires_grad_(True)
        if frozen_proj and '.attn.proj.lora_' in name:
            param.requires_grad_(False)
    return model


def test_per_entry_counts_and_shares(save_ckpt):
    """Each entry's tensors and parameters, as counted from the model's
    own names; its share of all parameters; entry 1 frozen, entry 0 not."""
    model = classifier(save_ckpt)
    data, text = report(model, FREEZE_PROJ)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    lines = text.splitlines()
    assert [e['entry'] for e in data['inserted_entries']] == LABELS
    for entry, part, state in zip(data['inserted_entries'], PARTS,
                                  ('all train', 'all frozen')):
        names = [n for n in params if part in n]
        count = sum(params[n].numel() for n in names)
        assert len(names) == 2 * 2  # A and B, 2 layers
        assert (entry['tensors'], entry['params']) == (len(names), count)
        line = (f'  {entry["entry"]}: {len(names)} tensors, {count:,d} '
                f'params ({100 * count / total:.4f}%), {state}')
        assert line in lines
    assert data['inserted_entries'][1]['trainable_tensors'] == 0
    assert lines[-4] == f'per insert entry (share of all {total:,d} params):'
    frozen_line = next(i for i, x in enumerate(lines)
                       if x.startswith('frozen: '))
    assert frozen_line == len(lines) - 5  # the block follows the old lines


@pytest.mark.parametrize('frozen_proj', [False, True])
def test_totals_are_peft_counts(save_ckpt, capsys, frozen_proj):
    """(trainable, all) is PEFT's ``get_nb_trainable_parameters`` of the
    same model with the same tensors training, and the totals line is
    what its ``print_trainable_parameters`` prints."""
    model = classifier(save_ckpt)
    data, text = report(model, FREEZE_PROJ if frozen_proj else 'loaded')
    twin = peft_twin(frozen_proj)
    assert (data['totals']['trainable'], data['totals']['all']) == \
        twin.get_nb_trainable_parameters()
    capsys.readouterr()
    twin.print_trainable_parameters()
    assert text.splitlines()[-1] == capsys.readouterr().out.strip()


def test_a_model_without_insert_has_the_totals_only(save_ckpt):
    """No entry block; the totals count the head (new) as trainable."""
    model = classifier(save_ckpt, insert=None)
    data, text = report(model, 'loaded')
    head = sum(p.numel() for n, p in model.named_parameters()
               if n.startswith('head.'))
    assert data['inserted_entries'] == []
    assert 'per insert entry' not in text
    assert data['totals']['trainable'] == head
    assert text.splitlines()[-1].startswith(f'trainable params: {head:,d} ||')


def test_the_ledger_note_names_its_entry():
    """The note insertion writes reads back as its entry."""
    record = Inserted(3, 'LoRA(rank=2, alpha=4)', 'fc', ('fc.lora_A.weight',))
    note = parse_note(record.describe())
    assert (note.index, note.type_name, note.label) == \
        (3, 'LoRA', 'insert[3] LoRA(rank=2, alpha=4)')
    assert parse_note('loaded by hand') is None
