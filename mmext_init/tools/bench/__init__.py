"""The benchmarks' parts: for ``mmext-bench``
(:mod:`mmext_init.tools.bench_init`), the models and checkpoints
(:mod:`.models`), one measurement in a fresh process (:mod:`.child`) and
the copy benchmark (:mod:`.copies`); ``mmext-bench-train`` (:mod:`.train`),
a training step with LoRA or DoRA against PEFT's, its models and modes
(:mod:`.train_models`) and one measurement (:mod:`.train_child`)."""
