"""The zoo sweep from a checkout: ``mmext-zoo-sweep``
(:mod:`mmext_init.tools.zoo_sweep`)."""
import sys

from mmext_init.tools.zoo_sweep import main

if __name__ == '__main__':
    sys.exit(main())
