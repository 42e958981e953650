# mmdet's own fine-tuning recipe on the tiny RetinaNet: the whole detector
# comes from `load_from` (a stock Runner's checkpoint, 3 classes), nothing
# is declared in init_cfg, `num_classes` changes (2). MMEngine loads
# `load_from` after init_weights() with strict=False and skips
# bbox_head.retina_cls, whose shape changed (9 anchors x 3 -> 9 x 2 classes);
# with mmext_init every tensor it loads gets a ledger entry (file, key), the
# report names the skipped ones with both shapes, and freeze='loaded' freezes
# exactly what `load_from` loaded: only the new classification conv trains.
# To start the classes kept from the checkpoint rows instead, add
#   load_from_cfg = dict(adapt=[dict(type='Classes', groups=9,
#       keys=r'bbox_head\.retina_cls\..*', index_map=[0, 1])])
# (a key stock MMEngine ignores; README, "Fine-tuning with load_from"):
# retina_cls is then loaded too, so choose what trains by name, e.g.
# freeze=dict(_delete_=True, name=r'(backbone|neck)\..*').
_base_ = './retinanet_r18_stock_tiny.py'
custom_imports = dict(_delete_=True, imports=['mmext_init'],
                      allow_failed_imports=False)

load_from = 'checkpoints/retinanet_r18_stock_tiny.pth'
model = dict(bbox_head=dict(num_classes=2))
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(freeze='loaded'))
