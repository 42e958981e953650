"""A checkpoint file to named tensors: the safe unpickler and MMEngine's
local scheme (:mod:`.safe_load`), zip checks (:mod:`.zip_checks`), formats
and lazy, memory-mapped reading (:mod:`.formats`), page release
(:mod:`.page_release`) and key converters (:mod:`.converters`)."""
