# Stock mmpretrain classifier (no plugin): a very small ConvNeXt (one block
# per stage, channels 16-128) on the data and schedule of vit_stock_tiny.py.
# Its last checkpoint (tools/make_tiny_data.py, mmpretrain's own
# tools/train.py) is checkpoints/convnext_stock_tiny.pth, which
# convnext_layer_decay_tiny.py fine-tunes.
_base_ = './vit_stock_tiny.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch=dict(depths=[1, 1, 2, 1], channels=[16, 32, 64, 128]),
        drop_path_rate=0.0,
        gap_before_final_norm=True),
    head=dict(
        _delete_=True,
        type='LinearClsHead',
        num_classes=2,
        in_channels=128,
        loss=dict(type='CrossEntropyLoss')))
