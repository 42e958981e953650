"""Verdicts of the zoo sweep's checks 2, 3 and 5 (imported by the worker in
both modes, so no mmext_init import here: ledgers are used duck-typed).

Check 3's rule for explaining a difference from stock, per differing tensor,
from its ledger entry:

- ``unreached``: the entry is an ``initializer`` whose ``declared_by``
  module's ``BaseModule.init_weights`` body never ran in stock, or an
  ``init_weights`` entry whose module stock's recursion never called
  (see :func:`~mmext_init.tools.zoo.models.stock_reach`), and the ledger's
  ``beyond_stock`` (the outermost modules stock never reaches whose init the
  plugin ran) holds that module or one above it: the ledger says so;
- ``rng-shift``: the entry is a random initializer (anything but
  ``Constant``/``Zero``/``Identity``/``CopyFrom``) or an ``init_weights``
  override, and an ``unreached`` random init, or the init of a module the
  ledger lists in ``beyond_stock`` and stock did not reach (its values may
  since have been overwritten, as CAE's neck does to its decoders), ran
  before it: its module comes earlier in ``named_modules()`` pre-order
  (MMEngine's init order) or lies below the tensor's declaring module. The
  extra draws shift the random stream of everything initialized after
  them;
- ``skipped-draws``: the same, with the draws stock makes and the plugin
  skips in place of the unreached ones: a random init of tensors that a
  checkpoint of the config then overwrites (``skipped_draws``;
  ``docs/guides/performance.md``, "How it stays fast");
- anything else (a constructor default, a deterministic init, no ledger
  entry, a tensor with no earlier unreached random init) is unexplained.
"""
import contextlib
import logging
import os
from typing import (Any, Dict, Iterator, List, Optional, Sequence, Set,
                    Tuple)

import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from mmext_init.tools.zoo.models import (alias_of, bit_equal, differing,
                                         first_line, state_of)

DEFER_ENV = 'MMEXT_INIT_DEFER'
DETERMINISTIC_INITS = {'Constant', 'Zero', 'Identity', 'CopyFrom',
                       'Pretrained'}
Outputs = Optional[Dict[str, torch.Tensor]]
State = Dict[str, torch.Tensor]


def verdict(ok: Optional[bool], detail: str, **data: Any) -> Dict[str, Any]:
    """``{'status': 'pass'|'fail'|'n/a', 'detail': ..., **data}``."""
    status = 'n/a' if ok is None else ('pass' if ok else 'fail')
    return dict(status=status, detail=detail, **data)


@contextlib.contextmanager
def deferral(mode: str) -> Iterator[None]:
    """``MMEXT_INIT_DEFER=mode`` while inside (read at every registry
    build): ``'1'`` defers every build, ``'0'`` none."""
    before = os.environ.get(DEFER_ENV)
    os.environ[DEFER_ENV] = mode
    try:
        yield
    finally:
        if before is None:
            del os.environ[DEFER_ENV]
        else:
            os.environ[DEFER_ENV] = before


class LogCapture(logging.Handler):
    """Inside ``with``: ``seen`` turns True when the current MMLogger logs a
    message containing ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle, self.seen = needle, False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = self.seen or self.needle in record.getMessage()

    def __enter__(self) -> 'LogCapture':
        MMLogger.get_current_instance().addHandler(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        MMLogger.get_current_instance().removeHandler(self)


def _forward_diff(a: Outputs, b: Outputs) -> Tuple[Optional[List[str]], str]:
    """(differing output names or None when not comparable, description)."""
    if a is None or b is None:
        return None, 'forward not compared (no forward ran)'
    diffs = differing(a, b)
    return diffs, (f'forward differs at {diffs[:3]}' if diffs
                   else 'forward identical')


def check_deferral(deferred: Tuple[State, Outputs],
                   off: Tuple[State, Outputs], ledger: Any) -> Dict[str, Any]:
    """Check 2: every build deferred vs none. Bit-identical tensors and
    outputs; when the build loads a checkpoint, tensors it does not load may
    differ (deferral skips the draws of the loaded tensors, so later random
    values move: rule 4 of ``docs/guides/contract.md``), the loaded ones may not."""
    diffs = differing(deferred[0], off[0])
    loads = {n for n, e in ledger.entries.items() if e.kind == 'checkpoint'}
    loaded_diffs = [n for n in diffs if n in loads or not loads]
    out_diffs, forward = _forward_diff(deferred[1], off[1])
    if loaded_diffs or (out_diffs and not diffs):
        what = 'loaded ' if loads else ''
        return verdict(False, f'{len(loaded_diffs)} of {len(off[0])} '
                       f'{what}tensors differ, first {loaded_diffs[:5]}; '
                       f'{forward}', differing=loaded_diffs[:100])
    if diffs:
        return verdict(True, f'{len(off[0]) - len(diffs)} tensors '
                       f'identical, {len(diffs)} not loaded differ (draws '
                       f'of the {len(loads)} loaded ones skipped)',
                       shifted=len(diffs))
    return verdict(True, f'{len(off[0])} tensors identical, {forward}')


def _is_random(entry: Any) -> bool:
    return entry.kind == 'init_weights' or (
        entry.kind == 'initializer'
        and entry.source not in DETERMINISTIC_INITS)


def _unreached(entry: Any, called: Set[str], body_ran: Set[str],
               beyond: Sequence[str]) -> bool:
    owner = entry.declared_by or ''
    if not any(owner == b or owner.startswith(b + '.') for b in beyond):
        return False  # the ledger does not say stock never reaches it
    if entry.kind == 'initializer':
        return owner not in body_ran
    return entry.kind == 'init_weights' and owner not in called


def _shifted(owner: str, shifters: List[str], order: Dict[str, int]) -> bool:
    """Whether an unreached random init ran before ``owner``'s init."""
    here = order.get(owner, 0)
    return any(order.get(u, 0) < here or u.startswith(owner + '.')
               or owner == '' for u in shifters)


def _explain(diffs: List[str], ledger: Any, called: Set[str],
             body_ran: Set[str], order: Dict[str, int],
             skipped: Sequence[str]) -> Dict[str, List[str]]:
    """Differing tensor names by explanation (rule in the module
    docstring)."""
    entries, beyond = ledger.entries, list(ledger.beyond_stock)
    shifters = sorted({e.declared_by or '' for e in entries.values()
                       if _unreached(e, called, body_ran, beyond)
                       and _is_random(e)}
                      | {b for b in beyond if b not in body_ran})
    groups: Dict[str, List[str]] = {'unreached': [], 'rng-shift': [],
                                    'skipped-draws': [], 'unexplained': []}
    for name in diffs:
        entry = entries.get(name)
        owner = '' if entry is None else entry.declared_by or ''
        if entry is not None and _unreached(entry, called, body_ran,
                                            beyond):
            groups['unreached'].append(name)
        elif entry is not None and _is_random(entry) and _shifted(
                owner, shifters, order):
            groups['rng-shift'].append(name)
        elif entry is not None and _is_random(entry) and _shifted(
                owner, list(skipped), order):
            groups['skipped-draws'].append(name)
        else:
            groups['unexplained'].append(name)
    return groups


def skipped_draws(loaded_ledger: Any, bare_ledger: Any,
                  called: Set[str], body_ran: Set[str]) -> List[str]:
    """Modules whose random init stock runs on tensors that a checkpoint
    then overwrites: the plugin skips those draws (``docs/guides/performance.md``),
    so later random values move. From the ledger of a build without the
    checkpoints (``bare_ledger``: who initializes each tensor) and of the
    build as shipped (``loaded_ledger``: which tensors a file gives)."""
    loaded = {n for n, e in loaded_ledger.entries.items()
              if e.kind == 'checkpoint'}
    beyond = list(bare_ledger.beyond_stock)
    return sorted({e.declared_by or '' for n, e in bare_ledger.entries.items()
                   if n in loaded and _is_random(e)
                   and not _unreached(e, called, body_ran, beyond)})


def check_vs_stock(off: Tuple[State, Outputs], stock: Tuple[State, Outputs],
                   ledger: Any, model: nn.Module, stock_info: Dict[str, Any],
                   skipped: Sequence[str] = ()) -> Dict[str, Any]:
    """Check 3: plugin (deferral off) vs stock, as shipped; every
    difference explained by the ledger (rule in the module docstring);
    ``skipped``: see :func:`skipped_draws`."""
    called, body_ran = set(stock_info['called']), set(stock_info['body_ran'])
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    entries = ledger.entries
    groups = _explain(differing(off[0], stock[0]), ledger, called, body_ran,
                      order, skipped)
    counts = {k: len(v) for k, v in groups.items()}
    modules = sorted({entries[n].declared_by or '<root>'
                      for n in groups['unreached']})
    if groups['unexplained']:
        first = alias_of(model)
        shown = [f'{n}: ' + (entries[n].describe() if n in entries
                             else 'no ledger entry') + (
                     f' [alias of {first[n]}: ' + entries[first[n]].describe()
                     + ']' if n in first and first[n] in entries else '')
                 for n in groups['unexplained'][:5]]
        return verdict(False, f"{counts['unexplained']} unexplained "
                       f"differences from stock ({counts['unreached']} "
                       f"unreached, {counts['rng-shift']} rng-shift, "
                       f"{counts['skipped-draws']} skipped-draws "
                       f'explained), first {shown}',
                       counts=counts, unexplained=groups['unexplained'][:100],
                       unreached_modules=modules,
                       beyond_stock=list(ledger.beyond_stock))
    out_diffs, forward = _forward_diff(off[1], stock[1])
    if counts['unreached'] or counts['rng-shift'] or counts['skipped-draws']:
        forward = 'forward not compared (values differ, explained)'
    elif out_diffs:
        return verdict(False, f'tensors identical but {forward}')
    return verdict(True, f"{counts['unreached']} explained by unreached "
                   f"modules ({len(modules)}), {counts['rng-shift']} by the "
                   f"shifted random stream, {counts['skipped-draws']} by "
                   f'draws skipped on loaded tensors; {forward}',
                   counts=counts, unreached_modules=modules,
                   beyond_stock=list(ledger.beyond_stock),
                   skipped_modules=list(skipped))


def check_shipped(state: State, stock_state: State, ledger: Any,
                  shipped: Dict[str, Any], build: str = ''
                  ) -> Dict[str, Any]:
    """The config's own checkpoint names (generated files in the hub
    cache): every tensor stock took from them is bit-identical in the
    plugin's build and credited to a checkpoint by its ledger; the plugin
    takes no other tensor from those files."""
    records = shipped['records']
    served = [r for r in records if 'skip' not in r]
    skipped = [f"{r['name']}: {r['skip']}" for r in records if 'skip' in r]
    if not served:
        return verdict(None, 'no checkpoint name' if not records else
                       f"no file made ({'; '.join(skipped)})",
                       skipped=skipped)
    loaded = shipped['loaded']
    differ = [n for n in loaded
              if n not in state or not bit_equal(state[n], stock_state[n])]
    entries = ledger.entries
    uncredited = [n for n in loaded if n not in differ and (
        n not in entries or entries[n].kind != 'checkpoint')]
    files = {os.path.basename(r['file']) for r in served}
    # floats only: the files keep integer buffers (indices, counters) at
    # the constructor's values, so a load of them is not seen in stock
    extra = sorted(n for n, e in entries.items() if e.kind == 'checkpoint'
                   and os.path.basename(e.source) in files
                   and n not in set(loaded) and n in state
                   and state[n].is_floating_point())
    what = ', '.join(sorted({f"{r['name']} ({r['layout']})" for r in served}))
    problems = [f'{len(v)} {text}, first {v[:5]}' for v, text in (
        (differ, 'tensors stock loads from the files differ'),
        (uncredited, 'loaded tensors not credited to a checkpoint'),
        (extra, 'tensors the plugin takes from the files but stock does '
         'not')) if v]
    data = dict(loaded=len(loaded), skipped=skipped, files=what)
    if not loaded and not problems:
        return verdict(None, f'stock loads no tensor from {what}', **data)
    if problems:
        where = f' in {build}' if build else ''
        return verdict(False, f"{'; '.join(problems)}{where} [{what}]",
                       differing=differ[:100], **data)
    return verdict(True, f'{len(loaded)} tensors from {what} identical to '
                   'stock' + (f"; skipped {'; '.join(skipped)}"
                              if skipped else ''), **data)


def check_ledger_values(ledger: Any, state: State, file_state: State,
                        full: bool, path: Optional[str] = None
                        ) -> Optional[str]:
    """A problem when an entry says ``checkpoint`` for a tensor whose value
    is not the file's at its key (with ``path``, only the entries crediting
    that file: a config's other checkpoints load the rest); with ``full``
    also when the ledger credits anything else for a tensor (the file
    provides every tensor)."""
    wrong, not_credited = [], []
    for name, entry in ledger.entries.items():
        other = path is not None and entry.kind == 'checkpoint' and \
            os.path.basename(entry.source) != os.path.basename(path)
        if entry.kind != 'checkpoint' or (other and full):
            not_credited.append(f'{name}: {entry.describe()}')
            continue
        if other:
            continue
        key = entry.key or name
        if name not in state or key not in file_state or not bit_equal(
                state[name], file_state[key]):
            wrong.append(f'{name} (key {key})')
    if wrong:
        return (f"ledger says 'checkpoint' for {len(wrong)} tensors whose "
                f'value is not the file\'s: {wrong[:5]}')
    if full and not_credited:
        return (f'ledger does not credit the checkpoint for '
                f'{len(not_credited)} tensors the file provides: '
                f'{not_credited[:5]}')
    return None


def check_backbone(model: Optional[nn.Module], ledger: Any,
                   exc: Optional[BaseException], ckpt: str,
                   file_state: State, self_loading: bool,
                   report_seen: bool) -> Dict[str, Any]:
    """Check 5: backbone bit-exact, all finite, report logged, ledger true;
    or an error naming the entry and the file where the backbone reads the
    checkpoint itself. A silent partial load fails."""
    if exc is not None:
        message = str(exc)
        named = 'backbone' in message and (
            ckpt in message or os.path.basename(ckpt) in message)
        if named and self_loading:
            return verdict(True, f'error (allowed, the backbone loads the '
                           f'checkpoint itself): {first_line(exc)}')
        why = 'does not name the entry and the file' if not named else \
            'the backbone does not load the checkpoint itself'
        return verdict(False, f'error ({why}): {first_line(exc)}')
    state = state_of(model)
    ours = {k: v for k, v in state.items() if k.startswith('backbone.')}
    files = {k: v for k, v in file_state.items() if k.startswith('backbone.')}
    diffs = differing(ours, files)
    if diffs:
        return verdict(False, f'silent partial load: {len(diffs)} of '
                       f'{len(ours)} backbone tensors differ from the file, '
                       f'first {diffs[:5]}', differing=diffs[:100])
    bad = [n for n, t in state.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        return verdict(False, f'{len(bad)} non-finite tensors, first {bad[:5]}')
    problem = check_ledger_values(ledger, state, file_state, full=False,
                                  path=ckpt)
    if problem:
        return verdict(False, problem)
    if not report_seen:
        return verdict(False, 'no initialization report was logged')
    return verdict(True, f'{len(ours)} backbone tensors bit-exact, report '
                   'logged')
