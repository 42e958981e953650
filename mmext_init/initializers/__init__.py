"""Init types registered in MMEngine's root ``WEIGHT_INITIALIZERS``:
``Pretrained`` (:mod:`.pretrained`), ``Zero``/``Identity``/``Orthogonal``/
``LoRAPair`` (:mod:`.layer_types` on :mod:`.layer_init`) and ``CopyFrom``
(:mod:`.copy_from`)."""
