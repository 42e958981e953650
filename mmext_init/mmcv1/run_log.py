"""mmext_init's reports in the log of an OpenMMLab 1.x run.

mmcv 1.x scripts log through ``mmcv.utils.get_logger`` (``mmcls``,
``mmdet``: console and ``<work_dir>/<time>.log``); the core logs through
MMEngine's current ``MMLogger`` (console only when no MMEngine Runner
exists). :class:`RunLogForwarder`, on MMEngine's current logger, hands
each record to the file handlers of the mmcv 1.x loggers too, so the
initialization report is in the run's log file; :func:`run_logger` names
the logger to log to directly (the trainable report).

Example:
    >>> import logging, os, tempfile
    >>> from mmcv.utils import get_logger
    >>> from mmengine.logging import print_log
    >>> import mmext_init
    >>> log_file = os.path.join(tempfile.mkdtemp(), 'run.log')
    >>> run = get_logger('doc_run', log_file=log_file)
    >>> print_log('mmext_init: to the run log', logger='current',
    ...           level=logging.WARNING)
    >>> 'mmext_init: to the run log' in open(log_file).read()
    True
"""
import logging

from mmcv.utils.logging import logger_initialized
from mmengine.logging import MMLogger


def run_logger() -> str:
    """The mmcv 1.x logger writing the run's log file (the last one set up
    with a file, e.g. ``mmcls``), else the first one, else ``'mmcv'``.

    Returns:
        str: a logger name for ``mmcv.utils.print_log``.

    Example:
        >>> isinstance(run_logger(), str)
        True
    """
    names = list(logger_initialized)
    with_file = [n for n in names if any(
        isinstance(h, logging.FileHandler)
        for h in logging.getLogger(n).handlers)]
    return (with_file or names or ['mmcv'])[-1 if with_file else 0]


class RunLogForwarder(logging.Handler):
    """Hands a record to every ``FileHandler`` of the mmcv 1.x loggers."""

    def emit(self, record: logging.LogRecord) -> None:
        for name in list(logger_initialized):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.FileHandler) and \
                        record.levelno >= handler.level:
                    handler.handle(record)


def forward_to_run_log() -> None:
    """Put a :class:`RunLogForwarder` on MMEngine's current logger (once)."""
    logger = MMLogger.get_current_instance()
    if not any(isinstance(h, RunLogForwarder) for h in logger.handlers):
        logger.addHandler(RunLogForwarder())


def stop_forwarding() -> None:
    """Take every :class:`RunLogForwarder` off MMEngine's current logger."""
    logger = MMLogger.get_current_instance()
    for handler in [h for h in logger.handlers
                    if isinstance(h, RunLogForwarder)]:
        logger.removeHandler(handler)
