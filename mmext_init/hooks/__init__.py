"""Runner hooks: ``LSUVInitHook`` (:mod:`.lsuv`), ``UnfreezeHook``
(:mod:`.unfreeze`)."""
