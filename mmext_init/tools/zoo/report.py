"""The zoo sweep's verdicts and report: one config's result from its
workers' JSON, one line per config, the summary (counts, skips with their
reasons, failures, plugin/stock time ratios) and the JSON file.

Example:
    >>> summarize([dict(package='mmdet', config='a/x.py', status='SKIP',
    ...                 reason='no model')])['skipped']
    [{'config': 'mmdet:a/x.py', 'reason': 'no model'}]
"""
import json
import statistics
from typing import Any, Dict, List, Optional

CHECKS = ('shipped', 'deferral', 'vs_stock', 'model_pretrained',
          'backbone_pretrained')
RATIOS = {'ratio_cpu': 'as shipped, CPU time',
          'ratio_wall': 'as shipped, wall time',
          'ratio_pretrained_cpu': 'model-level Pretrained, CPU time',
          'ratio_pretrained_wall': 'model-level Pretrained, wall time'}


def outcome(stock: Dict[str, Any], plugin: Dict[str, Any],
            error: Optional[str]) -> Dict[str, Any]:
    """One config's PASS / FAIL / SKIP with checks and timings, from the
    workers' JSON (``stock``, ``plugin``) and the run's ``error``.

    Example:
        >>> outcome({'skip': 'ImportError: x'}, {}, None)
        {'status': 'SKIP', 'reason': 'ImportError: x'}
    """
    if 'skip' in stock:
        return dict(status='SKIP', reason=stock['skip'])
    checks = plugin.get('checks', {})
    if stock.get('mmext_init_imported'):
        error = 'the stock run imported mmext_init'
    failed = [k for k, v in checks.items() if v['status'] == 'fail']
    status = 'FAIL' if error or failed or not checks else 'PASS'
    timings = dict(stock=stock.get('seconds'), plugin=plugin.get('seconds'),
                   stock_pretrained=stock.get('pretrained_seconds'),
                   plugin_pretrained=plugin.get('pretrained_seconds'))
    ratios = {f'{prefix}{clock}': _ratio(timings[f'plugin{suffix}'],
                                         timings[f'stock{suffix}'], clock)
              for prefix, suffix in (('ratio_', ''),
                                     ('ratio_pretrained_', '_pretrained'))
              for clock in ('wall', 'cpu')}
    return dict(status=status, error=error, checks=checks, timings=timings,
                **ratios, forward=stock.get('forward'),
                shipped=stock.get('shipped', {}).get('records', []),
                stock_pretrained_error=stock.get('pretrained_error'))


def _ratio(plugin: Optional[Dict[str, float]],
           stock: Optional[Dict[str, float]], clock: str) -> Optional[float]:
    if not plugin or not stock or not stock[clock]:
        return None
    return round(plugin[clock] / stock[clock], 3)


def format_line(result: Dict[str, Any]) -> str:
    """One line per config."""
    name = f"{result['package']}:{result['config']}"
    if result['status'] == 'SKIP':
        return f"SKIP  {name}  {result['reason']}"
    parts = [] if not result.get('error') else [result['error']]
    for check in CHECKS + tuple(c for c in result['checks']
                                if c not in CHECKS):  # e.g. 'build'
        info = result['checks'].get(check)
        if info is None:
            continue
        text = info['detail'] if info['status'] == 'fail' else \
            info['status'] if check not in ('vs_stock', 'shipped') \
            else info['detail']
        parts.append(f'{check}: {text}')
    t, timing = result['timings'], []
    for label, suffix in (('', ''), ('Pretrained ', '_pretrained')):
        if result.get(f'ratio{suffix}_cpu'):
            timing.append(
                f"{label}stock {t['stock' + suffix]['cpu']:.2f}s plugin "
                f"{t['plugin' + suffix]['cpu']:.2f}s cpu "
                f"x{result[f'ratio{suffix}_cpu']:.2f} "
                f"(wall x{result[f'ratio{suffix}_wall']:.2f})")
    return (f"{result['status']:5s} {name}  {' | '.join(parts)}  "
            f"[{' | '.join(timing) or 'no timing'}]")


def summarize(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Counts, skip reasons, failures (config, check, detail), ratios."""
    by = {s: [r for r in results if r['status'] == s]
          for s in ('PASS', 'FAIL', 'SKIP')}
    failures = []
    for r in by['FAIL']:
        bad = [(k, v['detail']) for k, v in r['checks'].items()
               if v['status'] == 'fail'] or [('run', r.get('error'))]
        failures += [dict(config=f"{r['package']}:{r['config']}", check=k,
                          detail=d) for k, d in bad]
    summary: Dict[str, Any] = dict(
        total=len(results), passed=len(by['PASS']), failed=len(by['FAIL']),
        skipped=[dict(config=f"{r['package']}:{r['config']}",
                      reason=r['reason']) for r in by['SKIP']],
        failures=failures)
    for key in RATIOS:
        timed = [(r[key], f"{r['package']}:{r['config']}") for r in results
                 if r.get(key)]
        if timed:
            summary[key] = dict(median=round(statistics.median(
                v for v, _ in timed), 3), max=max(timed)[0],
                max_config=max(timed)[1], configs=len(timed))
    return summary


def format_summary(summary: Dict[str, Any], wall: float) -> str:
    """The summary block printed after the per-config lines."""
    lines = [f"{summary['total']} configs: {summary['passed']} passed, "
             f"{summary['failed']} failed, {len(summary['skipped'])} skipped "
             f'(wall {wall / 60:.1f} min)']
    lines += [f"  skipped {s['config']}: {s['reason']}"
              for s in summary['skipped']]
    lines += [f"  FAILED {f['config']} [{f['check']}]: {f['detail']}"
              for f in summary['failures']]
    for key, label in RATIOS.items():
        if key in summary:
            s = summary[key]
            lines.append(f"  build+init_weights plugin/stock, {label}: median "
                         f"x{s['median']:.3f}, max x{s['max']:.3f} "
                         f"({s['max_config']}), {s['configs']} configs")
    for key in ('ratio_cpu', 'ratio_wall'):
        if key in summary:
            met = summary[key]['median'] <= 1.05 and \
                summary[key]['max'] <= 1.5
            lines.append(f'  overhead target (median <= 1.05, none above '
                         f"1.5), {RATIOS[key]}: {'met' if met else 'NOT met'}")
    return '\n'.join(lines)


def write_json(path: str, results: List[Dict[str, Any]], wall: float) -> None:
    """``{'wall_seconds', 'summary', 'results'}`` (results sorted)."""
    ordered = sorted(results, key=lambda r: (r['package'], r['config']))
    with open(path, 'w') as f:
        json.dump(dict(wall_seconds=round(wall, 1),
                       summary=summarize(ordered), results=ordered), f,
                  indent=1)
