"""How mmext_init attaches to MMEngine and torch: the patch table with
``install``/``uninstall``/``stock_mmengine`` (:mod:`.patches`), the
``init_weights`` mixin (:mod:`.mixin`) and the wrappers of ``init_weights``
overrides (:mod:`.overrides`)."""
