"""The benchmarks' parts: the models and checkpoints (:mod:`.models`), one
measurement in a fresh process (:mod:`.child`), and the copy benchmark
(:mod:`.copies`); the entry point is :mod:`mmext_init.tools.bench_init`
(``mmext-bench``)."""
