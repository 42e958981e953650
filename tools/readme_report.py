"""Keep README's example init report identical to the one the demo prints.

Builds the model of ``configs/mmdet/retinanet_r18_adapters_ft_tiny.py`` as
the installed ``tools/train.py`` does (a ``Runner`` from the config, then the
model's ``init_weights()``, the first thing ``Runner.train`` does), with the
tiny "pretrained" checkpoint that ``tools/make_tiny_data.py`` writes, and
captures the init report it logs: the text ``tools/demo.sh`` prints, without
the log prefix (time, logger, level) of its first line.

Usage::

    python tools/readme_report.py            # print the report
    python tools/readme_report.py --check    # exit 1 and a diff when README's block differs
    python tools/readme_report.py --update   # rewrite README's block

README's block is the fenced code block between the lines
``<!-- report:begin -->`` and ``<!-- report:end -->``; it is the one copy:
the documentation pages ``docs/getting_started.md`` and
``docs/guides/report.md`` include it from README. ``--data-dir`` is
where ``data/`` and ``checkpoints/`` live (default: the repository, as for
the demo); what is missing there is generated first (a stock train run of a
few seconds for the checkpoint).
"""
import argparse
import contextlib
import difflib
import io
import logging
import os
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from mmext_init.provenance.report import REPORT_TITLE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'mmdet',
                      'retinanet_r18_adapters_ft_tiny.py')
CHECKPOINT = 'retinanet_r18_stock_tiny.pth'  # what CONFIG loads
README = os.path.join(REPO, 'README.md')
BEGIN, END = '<!-- report:begin -->', '<!-- report:end -->'


class ReportCapture(logging.Handler):
    """Keeps the messages of the init reports logged while attached."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reports: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(REPORT_TITLE):
            self.reports.append(message)


def ensure_tiny_data(data_dir: str) -> None:
    """The tiny COCO set and the stock checkpoint CONFIG needs, made by
    ``tools/make_tiny_data.py`` if missing (its messages go to stderr)."""
    subprocess.run([
        sys.executable, os.path.join(REPO, 'tools', 'make_tiny_data.py'),
        '--out-dir', data_dir, '--only', 'ckpt', '--checkpoint', CHECKPOINT
    ], check=True, stdout=sys.stderr)


def build_and_init(config: str, work_dir: str) -> ReportCapture:
    """``Runner.from_cfg`` + ``init_weights()``, as train.py + Runner.train
    do, from the current directory; returns what the report capture saw."""
    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else \
        runner.model
    capture = ReportCapture()
    runner.logger.addHandler(capture)
    try:
        model.init_weights()
    finally:
        runner.logger.removeHandler(capture)
    return capture


def demo_report(data_dir: str, config: str = CONFIG) -> str:
    """The init report of ``config`` as the demo prints it, built from
    ``data_dir`` (where its relative data and checkpoint paths point)."""
    ensure_tiny_data(data_dir)
    output = io.StringIO()  # the Runner's console log: shown on failure
    cwd = os.getcwd()
    os.chdir(data_dir)
    try:
        with tempfile.TemporaryDirectory() as work_dir, \
                contextlib.redirect_stdout(output), \
                contextlib.redirect_stderr(output):
            capture = build_and_init(config, work_dir)
    except BaseException:
        sys.stderr.write(output.getvalue()[-5000:])
        raise
    finally:
        os.chdir(cwd)
    if len(capture.reports) != 1:
        sys.stderr.write(output.getvalue()[-5000:])
        raise SystemExit(f'[readme_report] expected one init report from '
                         f'{config}, got {len(capture.reports)}: is '
                         "mmext_init in the config's custom_imports?")
    return capture.reports[0]


def block_bounds(text: str, path: str) -> Sequence[int]:
    """Line indices of the begin and end markers in ``text``."""
    lines = text.splitlines()
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise SystemExit(
            f'[readme_report] {path}: expected one {BEGIN} line followed by '
            f'one {END} line, found {len(begins)} and {len(ends)}. Put the '
            'markers around the example report block, each on its own line.')
    return begins[0], ends[0]


def replace_block(text: str, report: str, path: str) -> str:
    """``text`` with the lines between the markers set to ``report`` as a
    fenced code block (the markers and everything else kept)."""
    begin, end = block_bounds(text, path)
    lines = text.splitlines(keepends=True)
    block = ['```\n'] + [line + '\n' for line in report.splitlines()] + \
        ['```\n']
    return ''.join(lines[:begin + 1] + block + lines[end:])


def check(readme: str, report: str) -> Optional[str]:
    """None when README's block is ``report``, else a unified diff."""
    with open(readme) as f:
        current = f.read()
    wanted = replace_block(current, report, readme)
    if wanted == current:
        return None
    return ''.join(difflib.unified_diff(
        current.splitlines(keepends=True), wanted.splitlines(keepends=True),
        f'{readme} (now)', f'{readme} (the demo report)'))


def update(readme: str, report: str) -> bool:
    """Rewrite README's block (atomically); whether anything changed."""
    with open(readme) as f:
        current = f.read()
    wanted = replace_block(current, report, readme)
    if wanted == current:
        return False
    with open(readme + '.tmp', 'w') as f:
        f.write(wanted)
    os.replace(readme + '.tmp', readme)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--check', action='store_true',
                      help="exit 1 with a diff when README's block differs")
    mode.add_argument('--update', action='store_true',
                      help="rewrite README's block")
    parser.add_argument('--data-dir', default=REPO,
                        help='where data/ and checkpoints/ are (made if '
                        'missing); default: the repository, as the demo')
    parser.add_argument('--readme', default=README)
    args = parser.parse_args(argv)
    report = demo_report(os.path.abspath(args.data_dir))
    if args.check:
        diff = check(args.readme, report)
        if diff is None:
            print(f'[readme_report] {args.readme}: the example report is '
                  'the demo report')
            return 0
        sys.stdout.write(diff)
        print(f'[readme_report] {args.readme}: the example report differs '
              'from the demo report; run python tools/readme_report.py '
              '--update')
        return 1
    if args.update:
        changed = update(args.readme, report)
        print(f"[readme_report] {args.readme}: "
              f"{'updated' if changed else 'already up to date'}")
        return 0
    print(report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
