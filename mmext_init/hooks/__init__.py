"""Runner hooks: ``LSUVInitHook`` (:mod:`.lsuv`)."""
