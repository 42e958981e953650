"""``Classes`` on real mmdet heads: the rows' grouping is stated or it is an
error, never guessed, and the ledger shows the grouping applied."""
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from mmext_init import InitConfigError, format_report, get_provenance
from mmext_init.loading.adapt import dry_run
from mmext_init.loading.adapt_classes import Classes, readings
from toy_models import tiny_retinanet_cfg

INDEX_MAP = [0, 2, 16, -1]  # model class i <- checkpoint class; 3 is new
DECLARED = dict(type='Constant', val=7, bias=7, layer=['Linear', 'Conv2d'])


def _build(cfg):
    init_default_scope('mmdet')
    return MODELS.build(cfg)


def _pretrained(head_cfg, num_classes, save_ckpt, adapt):
    """A head of ``num_classes`` loading an 80-class head's checkpoint with
    ``adapt``; returns (old head, new head) before ``init_weights``."""
    old = _build(dict(head_cfg, num_classes=80))
    with torch.no_grad():
        for p in old.parameters():
            p.normal_()
    path = save_ckpt({k: v.detach().clone()
                      for k, v in old.state_dict().items()})
    new = _build(dict(head_cfg, num_classes=num_classes, init_cfg=[
        dict(type='Pretrained', checkpoint=path, adapt=adapt), DECLARED]))
    return old, new


BBOX_HEAD = dict(type='Shared2FCBBoxHead', in_channels=4, fc_out_channels=16,
                 roi_feat_size=2)


def test_fc_reg_without_inner_is_an_error_listing_the_readings(save_ckpt):
    """Regression: 320 rows were read as 4 groups x 80 classes without a
    word, model rows 4-7 came from checkpoint rows 80, 82, 96."""
    _, new = _pretrained(BBOX_HEAD, 4, save_ckpt, [dict(
        type='Classes', keys=r'fc_reg\.(weight|bias)', index_map=INDEX_MAP)])
    with pytest.raises(InitConfigError) as err:
        new.init_weights()
    text = str(err.value)
    assert 'Classes on fc_reg.weight: checkpoint (320, 16) -> model ' \
        '(16, 16): each class has 4 rows, which can be read 3 ways' in text
    assert 'inner=4 (class-major: 80 classes x 4 rows each)' in text
    assert 'groups=4 (groups-major: 4 groups x 80 classes)' in text
    assert 'groups=2, inner=2 (2 groups x 80 classes x 2 rows each)' in text


@pytest.mark.parametrize('grouping', [dict(inner=4), dict(groups=1)])
def test_faster_rcnn_bbox_head_rows_with_stated_grouping(grouping, save_ckpt):
    """fc_reg is class-major (4 deltas per class), fc_cls has the
    background row last: kept classes predict what they predicted."""
    old, new = _pretrained(BBOX_HEAD, 4, save_ckpt, [
        dict(type='Classes', keys=r'fc_reg\.(weight|bias)',
             index_map=INDEX_MAP, **grouping),
        dict(type='Classes', keys=r'fc_cls\.(weight|bias)',
             index_map=INDEX_MAP, extra=1)])
    new.init_weights()
    reg_old = old.fc_reg.weight.view(80, 4, 16)
    reg_new = new.fc_reg.weight.view(4, 4, 16)
    for cls, src in enumerate(INDEX_MAP[:3]):
        assert torch.equal(reg_new[cls], reg_old[src])
        assert torch.equal(new.fc_cls.weight[cls], old.fc_cls.weight[src])
    assert torch.all(reg_new[3] == 7) and torch.all(new.fc_cls.weight[3] == 7)
    assert torch.equal(new.fc_cls.weight[4], old.fc_cls.weight[80])  # bg
    assert torch.equal(new.fc_cls.bias[[0, 1, 2, 4]],
                       old.fc_cls.bias[[0, 2, 16, 80]])
    rois = torch.randn(3, 4, 2, 2)
    with torch.no_grad():
        (_, d_old), (_, d_new) = old(rois), new(rois)
    assert torch.allclose(d_new.view(3, 4, 4)[:, :3],
                          d_old.view(3, 80, 4)[:, [0, 2, 16]], atol=1e-5)
    ledger = get_provenance(new)
    reg_note = "Classes(index_map=[0, 2, 16, -1], rows='80->4 classes x 4 " \
        "inner')"
    assert ledger.entries['fc_reg.bias'].notes[0] == reg_note
    assert ledger.entries['fc_cls.weight'].notes[0] == \
        "Classes(index_map=[0, 2, 16, -1], rows='80->4 classes + 1 extra')"
    assert f'adapted fc_reg.weight: {reg_note}' in format_report(ledger)


def test_fc_cls_without_extra_names_the_key_and_hints_extra(save_ckpt):
    """Regression: the error said 'Classes on ?' and gave no hint."""
    _, new = _pretrained(BBOX_HEAD, 4, save_ckpt, [dict(
        type='Classes', keys=r'fc_cls\.(weight|bias)', index_map=INDEX_MAP)])
    with pytest.raises(InitConfigError) as err:
        new.init_weights()
    text = str(err.value)
    assert 'Classes on fc_cls.weight: checkpoint (81, 16) -> model (5, 16): ' \
        '5 model rows and 81 checkpoint rows are not groups x classes x ' \
        'inner + extra with 4 model classes, extra=0' in text
    assert 'readings that fit: extra=1 (80 checkpoint classes x 1 row + 1 ' \
        'trailing row, e.g. a background row)' in text


RETINA_HEAD = dict(type='RetinaHead', in_channels=8, feat_channels=8,
                   stacked_convs=1)  # mmdet's default anchors: 9 per place


def test_retina_cls_needs_its_anchor_groups_stated(save_ckpt):
    """9 anchors x C rows read the same as C classes x 9 rows (shapes
    alone cannot tell): an error on the whole detector's entry, and
    groups=9 loads the anchors' rows."""
    keep = [5, 0, 79, -1, 12]
    adapt = dict(type='Classes', keys=r'retina_cls\.(weight|bias)',
                 index_map=keep)
    detector = tiny_retinanet_cfg()
    detector['bbox_head'].update(anchor_generator=dict(
        type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
        ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32]), num_classes=80)
    path = save_ckpt(_build(detector).state_dict())
    detector['bbox_head']['num_classes'] = 5
    model = _build(dict(detector, init_cfg=dict(
        type='Pretrained', checkpoint=path,
        adapt=[dict(adapt, keys=r'bbox_head\.' + adapt['keys'])])))
    with pytest.raises(InitConfigError, match=r'Classes on bbox_head\.'
                       r'retina_cls\.weight: checkpoint \(720, 32, 3, 3\) -> '
                       r'model \(45, 32, 3, 3\): each class has 9 rows') as err:
        model.init_weights()
    assert 'groups=9 (groups-major: 9 groups x 80 classes)' in str(err.value)
    assert 'inner=9 (class-major: 80 classes x 9 rows each)' in str(err.value)
    old, new = _pretrained(RETINA_HEAD, 5, save_ckpt, [dict(adapt, groups=9)])
    new.init_weights()
    rows_old = old.retina_cls.weight.view(9, 80, 8, 3, 3)
    rows_new = new.retina_cls.weight.view(9, 5, 8, 3, 3)
    assert torch.equal(rows_new[:, [0, 1, 2, 4]], rows_old[:, [5, 0, 79, 12]])
    assert torch.all(rows_new[:, 3] == 7)
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        s_old = old.forward_single(x)[0].view(1, 9, 80, 4, 4)
        s_new = new.forward_single(x)[0].view(1, 9, 5, 4, 4)
    assert torch.allclose(s_new[:, :, 1], s_old[:, :, 0], atol=1e-5)
    assert get_provenance(new).entries['retina_cls.weight'].notes[0] == \
        "Classes(index_map=[5, 0, 79, -1, 12], rows='9 groups x 80->5 classes')"


def test_planning_error_on_a_head_with_its_own_init_weights(save_ckpt):
    """Regression: a head overriding ``init_weights`` (every mmdet dense
    head) turned a planning error of its own entry into "loads ... itself
    and ignores adapt"; the error is the planning one."""
    _, head = _pretrained(RETINA_HEAD, 5, save_ckpt, [dict(
        type='Classes', keys=r'retina_cls\.(weight|bias)',
        index_map=[5, 0, 79, -1, 12])])
    with pytest.raises(InitConfigError) as err:
        head.init_weights()
    assert 'Classes on retina_cls.weight' in str(err.value)
    assert 'itself' not in str(err.value)


def test_fcos_conv_cls_loads_without_grouping_arguments(save_ckpt):
    """One row per class: a single reading, no argument needed."""
    head = dict(type='FCOSHead', in_channels=8, feat_channels=32,  # GN(32)
                stacked_convs=1)
    old, new = _pretrained(head, 3, save_ckpt, [dict(
        type='Classes', keys=r'conv_cls\.(weight|bias)',
        old_classes=[f'c{i}' for i in range(80)],
        new_classes=['c3', 'new', 'c70'])])
    new.init_weights()
    assert torch.equal(new.conv_cls.weight[[0, 2]], old.conv_cls.weight[[3, 70]])
    assert torch.equal(new.conv_cls.bias[[0, 2]], old.conv_cls.bias[[3, 70]])
    assert torch.all(new.conv_cls.weight[1] == 7)
    assert get_provenance(new).entries['conv_cls.bias'].notes[0] == \
        "Classes(classes='2 kept', new=['new'], rows='80->3 classes')"


def test_stated_grouping_that_does_not_fit_lists_what_would():
    with pytest.raises(ValueError) as err:
        dry_run(Classes('w', index_map=INDEX_MAP, groups=3), 'head.w',
                (320, 16), (16, 16))
    assert 'with 4 model classes, groups=3, extra=0; readings that fit: ' \
        'groups= or inner= multiplying to 4 (80 checkpoint classes x 4 rows)' \
        in str(err.value)


def test_readings_that_copy_the_same_rows_are_not_ambiguous():
    """Same classes in the same order: every reading keeps every row."""
    same = Classes('w', old_classes=list('ab'), new_classes=list('ab'))
    assert not same.changes((4, 3), (4, 3))
    assert same('w', torch.arange(4.).view(4, 1), (4, 1)).region is None
    swapped = Classes('w', old_classes=list('ab'), new_classes=list('ba'))
    assert swapped.changes((4, 3), (4, 3))  # ambiguous: the call raises
    with pytest.raises(ValueError, match='Classes on w: .* can be read 2 ways'):
        swapped('w', torch.zeros(4, 3), (4, 3))


def test_readings_enumerates_each_split():
    assert [(r.groups, r.inner, r.old) for r in readings(4, 16, 320, 0)] == \
        [(1, 4, 80), (2, 2, 80), (4, 1, 80)]
    assert readings(4, 5, 81, 0) == []
    assert [(r.groups, r.inner, r.old) for r in readings(4, 5, 81, 1)] == \
        [(1, 1, 80)]
    assert readings(4, 16, 320, 0, num_old=79) == []


@pytest.mark.parametrize('bad', [dict(groups=0), dict(inner=2.5),
                                 dict(extra=-1), dict(index_map=[])])
def test_bad_arguments_are_refused(bad):
    args = dict(index_map=[0, -1])
    args.update(bad)
    with pytest.raises(ValueError, match='Classes: '):
        Classes('w', **args)


def test_dry_run_of_a_partial_layout_keeps_the_note():
    """The shape-only run describes the same grouping as the real call."""
    t = Classes('w', index_map=INDEX_MAP, inner=4)
    meta = dry_run(t, 'w', (320, 16), (16, 16))
    real = t('w', torch.randn(320, 16), (16, 16))
    assert meta.description == real.description
    assert torch.equal(meta.region, real.region)
    assert real.region.tolist() == [True] * 12 + [False] * 4
