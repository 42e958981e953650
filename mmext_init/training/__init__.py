"""Train what is new: freezing, learning rates and layer decay
chosen by where each weight came from, through
:class:`ProvenanceOptimWrapperConstructor` and its SELECTOR grammar."""
from .constructor import ProvenanceOptimWrapperConstructor
from .selectors import ParamTable, SelectorError, select

__all__ = ['ProvenanceOptimWrapperConstructor', 'ParamTable',
           'SelectorError', 'select']
