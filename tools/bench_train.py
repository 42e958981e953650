"""The training-step benchmark from a checkout: ``mmext-bench-train``
(:mod:`mmext_init.tools.bench.train`)."""
import sys

from mmext_init.tools.bench.train import main

if __name__ == '__main__':
    sys.exit(main())
