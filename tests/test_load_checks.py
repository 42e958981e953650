"""min_loaded failures name the largest missing and shape-mismatched groups
(folded, with shapes), on a real mmdet RetinaNet and a real checkpoint."""
import pytest
from mmengine.registry import MODELS, init_default_scope

from mmext_init import CheckpointError
from mmext_init.loading.load_checks import largest_groups
from toy_models import tiny_retinanet_cfg


def _detector(num_classes: int, **model):
    init_default_scope('mmdet')
    cfg = tiny_retinanet_cfg()
    cfg['bbox_head']['num_classes'] = num_classes
    return MODELS.build(dict(cfg, **model))


def test_min_loaded_error_lists_the_largest_missing_and_mismatched(save_ckpt):
    """Regression: the error gave only the fraction."""
    state = {k: v for k, v in _detector(3).state_dict().items()
             if not k.startswith('backbone.layer4.')}
    path = save_ckpt(state)
    model = _detector(5, init_cfg=dict(type='Pretrained', checkpoint=path,
                                       min_loaded=0.9))
    with pytest.raises(CheckpointError) as err:
        model.init_weights()
    text = str(err.value)
    assert 'below min_loaded=0.9. Largest missing (not in the checkpoint): ' \
        'backbone.layer4.1.conv{1..2}.weight (512, 512, 3, 3): 2 tensors, ' \
        '4.7M elements; backbone.layer4.0.conv2.weight (512, 512, 3, 3): ' \
        '1 tensor, 2.4M elements; backbone.layer4.0.conv1.weight ' \
        '(512, 256, 3, 3): 1 tensor, 1.2M elements;' in text
    assert 'more groups. Largest shape-mismatched: ' \
        'bbox_head.retina_cls.weight checkpoint (3, 32, 3, 3) vs model ' \
        '(5, 32, 3, 3): 1 tensor, 1.4K elements; bbox_head.retina_cls.bias ' \
        'checkpoint (3,) vs model (5,): 1 tensor, 5 elements.' in text
    assert 'num_batches_tracked' not in text
    assert 'or lower min_loaded' in text


def test_largest_groups_folds_per_shape_and_counts_the_rest():
    shapes = {f'a.{i}.{p}': '(4, 4)' if p == 'w' else '(4,)'
              for i in range(3) for p in ('w', 'b')}
    shapes['c.w'] = '(2, 2)'
    numel = {n: 16 if s == '(4, 4)' else 4 if s == '(4,)' else 4
             for n, s in shapes.items()}
    assert largest_groups(shapes, numel, limit=2) == [
        'a.{0..2}.w (4, 4): 3 tensors, 48 elements',
        'a.{0..2}.b (4,): 3 tensors, 12 elements', '1 more groups']
