"""Named tensors to a model: a ``Pretrained`` entry's options
(:mod:`.options`), key matching (:mod:`.key_matching`), shape adaptation
(:mod:`.adapt`, :mod:`.adapt_classes`), the load plan (:mod:`.plan`), its
checks (:mod:`.load_checks`) and the copy (:mod:`.copy`)."""
from . import adapt_classes  # noqa: F401  (registers the Classes transform)
