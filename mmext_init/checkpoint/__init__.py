"""A checkpoint file to named tensors: the safe reader and MMEngine's
local scheme (:mod:`.safe_load`) with its restricted unpickler
(:mod:`.restricted_pickle`), zip checks (:mod:`.zip_checks`), formats
and lazy, memory-mapped reading (:mod:`.formats`), page release
(:mod:`.page_release`) and key converters (:mod:`.converters`)."""
