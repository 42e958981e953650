"""pytest plugin of ``tools/upstream_suites.py``: writes each test's outcome
to ``--outcomes-json PATH`` (JSON), keyed by node id.

An outcome is ``passed``, ``failed``, ``skipped``, ``xfailed``, ``xpassed``,
``error`` (setup failed) or ``collect-error`` (for a module that did not
import), with ``+teardown-error`` appended when teardown failed. The file
also says whether ``mmext_init`` was imported in the process by the end.
"""
import json
import sys
from typing import Dict

RESULTS: Dict[str, dict] = {}


def pytest_addoption(parser) -> None:
    parser.addoption('--outcomes-json', required=True,
                     help='where to write the outcomes (JSON)')


def _message(report) -> str:
    """The first line of what went wrong, or the skip reason."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (file, line, reason) of a skip
        return str(longrepr[2])
    crash = getattr(longrepr, 'reprcrash', None)
    text = crash.message if crash is not None else str(longrepr or '')
    return text.strip().splitlines()[0][:300] if text.strip() else ''


def _phase_outcome(report) -> str:
    if hasattr(report, 'wasxfail'):
        return 'xfailed' if report.skipped else 'xpassed'
    if report.when == 'setup' and report.failed:
        return 'error'
    return report.outcome


def pytest_runtest_logreport(report) -> None:
    entry = RESULTS.setdefault(report.nodeid, {
        'outcome': None, 'message': '', 'duration': 0.0})
    entry['duration'] += report.duration
    if report.when == 'teardown':
        if report.failed:
            entry['outcome'] = f"{entry['outcome']}+teardown-error"
            entry['message'] = entry['message'] or _message(report)
        return
    if report.when == 'call' or not report.passed:
        entry['outcome'] = _phase_outcome(report)
        if not report.passed:
            entry['message'] = _message(report)


def pytest_collectreport(report) -> None:
    if report.failed:
        RESULTS[report.nodeid] = {'outcome': 'collect-error', 'duration': 0.0,
                                  'message': _message(report)}


def pytest_sessionfinish(session) -> None:
    with open(session.config.getoption('outcomes_json'), 'w') as f:
        json.dump({'mmext_init_imported': 'mmext_init' in sys.modules,
                   'tests': RESULTS}, f, indent=1)
