# Tiny variant of retinanet_swin_adapters_ft.py (tests and the demo): a very
# small Swin (embed_dims 32, one block per stage), the tiny data and schedule
# of retinanet_r18_adapters_ft_tiny.py. Its checkpoint comes from a stock
# Runner run of retinanet_swin_stock_tiny.py (tools/make_tiny_data.py).
_base_ = './retinanet_r18_adapters_ft_tiny.py'

detector_checkpoint = 'checkpoints/retinanet_swin_stock_tiny.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinWithAdapters',
        pretrain_img_size=128,
        embed_dims=32,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        out_indices=(1, 2, 3),
        convert_weights=False,
        init_cfg=dict(type='Pretrained', checkpoint=detector_checkpoint)),
    neck=dict(in_channels=[64, 128, 256], start_level=0, num_outs=5))
