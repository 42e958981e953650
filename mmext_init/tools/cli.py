"""What the command-line tools share, as mmdet's tools do it: the options
every tool spells the same way (``--cfg-options``, ``--atol``, ``--json``),
one way of reading a config, one error format, one JSON output.

Errors: a usage or input error (a config that does not load, an init or
checkpoint error, an input the model does not take) is printed as
``<tool>: error: <message>`` on stderr and the exit status is 2, as
argparse does for a bad command line.

Example:
    >>> parser = tool_parser('mmext-demo', 'A demo.')
    >>> add_atol(parser)
    >>> add_json(parser)
    >>> args = parser.parse_args(['--json', '-'])
    >>> args.atol, args.json
    (1e-05, '-')
"""
import argparse
import contextlib
import copy
import json
import logging
import math
import os
import sys
from typing import (Any, Callable, Iterator, Optional, Sequence,
                    Tuple)

from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger

from ..errors import CheckpointError, InitConfigError

ATOL = 1e-5
ATOL_HELP = (
    'largest absolute output difference accepted (default: %(default)g: '
    'two float32 forwards of the same function, computed in another order, '
    'differ by about 1e-6 on unit-scale activations, while a changed '
    'function differs by orders of magnitude more)')


class ToolError(Exception):
    """A usage or input error of a tool: exit status 2."""


INPUT_ERRORS = (ToolError, InitConfigError, CheckpointError)


def tool_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of the tool ``prog`` (its console-script name, in every
    message whatever way it is run), described by the first paragraph of
    its module's docstring ``doc``.

    Example:
        >>> parser = tool_parser('mmext-demo',
        ...                      'A demo\\nin two lines.\\n\\nMore.')
        >>> parser.prog, parser.description
        ('mmext-demo', 'A demo\\nin two lines.')
    """
    return argparse.ArgumentParser(
        prog=prog, description=doc.strip().split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    """mmdet's ``--cfg-options key=value ...``, merged into the config."""
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, default=None,
        help='override settings of the config, key=value pairs (xxx=yyy '
        'with dotted keys, lists as key="[a,b]" or key=a,b), merged into '
        'the config as mmdet\'s tools do')


def add_atol(parser: argparse.ArgumentParser) -> None:
    """``--atol``, with the one default of every tool."""
    parser.add_argument('--atol', type=float, default=ATOL, help=ATOL_HELP)


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: the result as JSON, ``-`` for stdout."""
    parser.add_argument(
        '--json', metavar='PATH', default=None,
        help='also write the result as JSON to PATH; with "-" the JSON is '
        'written to stdout and the text (and the logs) go to stderr')


def load_config(path: str, options: Optional[dict] = None) -> Config:
    """``Config.fromfile(path)`` (its ``custom_imports`` imported) with
    ``--cfg-options`` merged; ToolError naming the file if it does not
    load.

    Example:
        >>> load_config('no/such/config.py')
        Traceback (most recent call last):
        ...
        mmext_init.tools.cli.ToolError: no/such/config.py: no such config file
    """
    if not os.path.isfile(path):
        raise ToolError(f'{path}: no such config file')
    try:
        cfg = Config.fromfile(path)
    except (OSError, SyntaxError, ImportError, KeyError) as error:
        raise ToolError(f'{path}: {error}') from error
    if options:
        cfg.merge_from_dict(copy.deepcopy(options))
    return cfg


@contextlib.contextmanager
def text_to_stderr(enabled: bool) -> Iterator[None]:
    """While the block runs (if ``enabled``): ``print`` and MMEngine's log
    streams write to stderr, so stdout holds only the JSON."""
    if not enabled:
        yield
        return
    handlers = [h for logger in MMLogger._instance_dict.values()
                for h in logger.handlers
                if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:  # not setStream: it flushes the old stream
        handler.stream = sys.stderr
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in zip(handlers, streams):
            handler.stream = stream


def finite(value: float) -> Optional[float]:
    """``value``, or None for inf and NaN (JSON has neither).

    Example:
        >>> finite(1e-8), finite(float('inf'))
        (1e-08, None)
    """
    return value if math.isfinite(value) else None


def write_json(path: Optional[str], data: Any) -> None:
    """``data`` as JSON to ``path`` (``-``: stdout; None: nothing)."""
    if path is None:
        return
    text = json.dumps(data, indent=1) + '\n'
    if path == '-':
        sys.stdout.write(text)
        return
    try:
        with open(path, 'w') as f:
            f.write(text)
    except OSError as error:
        raise ToolError(f'--json {path}: {error}') from error


def check_json_path(path: Optional[str]) -> None:
    """ToolError before the run if ``--json``'s folder does not exist."""
    if path not in (None, '-') and not os.path.isdir(
            os.path.dirname(os.path.abspath(path))):
        raise ToolError(f'--json {path}: no such directory')


Body = Callable[[argparse.Namespace], Tuple[int, Optional[dict]]]


def run_tool(parser: argparse.ArgumentParser,
             argv: Optional[Sequence[str]], body: Body) -> int:
    """Parse ``argv``, run ``body(args)`` (its text on stderr with
    ``--json -``), write the data it returns to ``--json`` and return its
    exit status; an input error is printed as ``<tool>: error: <message>``
    on stderr and gives 2.

    Example:
        >>> def body(args):
        ...     raise ToolError('no such file')
        >>> run_tool(tool_parser('mmext-demo', ''), [], body)
        2
    """
    args = parser.parse_args(argv)
    path = getattr(args, 'json', None)
    try:
        check_json_path(path)
        with text_to_stderr(path == '-'):
            status, data = body(args)
        write_json(path, data)
    except INPUT_ERRORS as error:
        print(f'{parser.prog}: error: {error}', file=sys.stderr)
        return 2
    return status
