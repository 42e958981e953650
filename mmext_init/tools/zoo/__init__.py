"""The zoo sweep's parts (``mmext-zoo-sweep``,
:mod:`mmext_init.tools.zoo_sweep`): selecting shipped configs
(:mod:`.sweep`), their checkpoint names and generated files (:mod:`.urls`,
:mod:`.files`, :mod:`.layouts`), the stock and plugin workers
(:mod:`.stock`, :mod:`.checks`), models and comparisons (:mod:`.models`),
verdicts (:mod:`.verdicts`), the report (:mod:`.report`) and the timm
sample (:mod:`.timm_sample`). Only :mod:`.checks` imports other parts of
mmext_init: the stock worker loads the rest without the plugin.
"""
