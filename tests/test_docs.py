"""The documentation site builds with warnings as errors, and the built
pages hold what they promise: an API entry per public name, every type
mmext_init registers, README's (test-checked) report block; README stays a
landing page whose links reach the site's pages."""
import html
import os
import re
import shutil
import subprocess
import sys

import pytest
from mmengine.registry import WEIGHT_INITIALIZERS

import mmext_init

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, 'docs')
sys.path.insert(0, os.path.join(DOCS, '_ext'))
from mmext_docs import REGISTRIES, registered  # noqa: E402


def build(source: str, out: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b',
         'html', source, out], capture_output=True, text=True, cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS='1'))


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp('docs') / 'html')
    proc = build(DOCS, out)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    return out


def page_text(site: str, page: str) -> str:
    """The text of a built page, tags stripped."""
    with open(os.path.join(site, page + '.html')) as f:
        return html.unescape(re.sub(r'<[^>]+>', '', f.read()))


def test_every_public_name_has_an_api_entry(site):
    with open(os.path.join(site, 'api.html')) as f:
        api = f.read()
    missing = [n for n in mmext_init.__all__
               if f'id="mmext_init.{n}"' not in api]
    assert not missing


def test_every_registered_type_is_listed_with_its_docstring(site):
    text = page_text(site, 'api')
    for registry, form in REGISTRIES.values():
        for name, obj in registered(registry):
            assert form.format(name) in text, name
            words = re.sub(r'(:\w+:)|`', '',
                           ' '.join(obj.__doc__.split()[:2]))
            assert words in ' '.join(text.split()).replace('`', ''), name
    assert len(registered(WEIGHT_INITIALIZERS)) >= 6  # Pretrained, Zero, ...


def readme() -> str:
    with open(os.path.join(REPO, 'README.md')) as f:
        return f.read()


@pytest.mark.parametrize('page', ['getting_started', 'guides/report'])
def test_pages_show_the_readme_report(site, page):
    """README's block (the one source, checked against the demo by
    tests/test_readme_report.py) is included, line for line."""
    block = readme().split('<!-- report:begin -->')[1].split(
        '<!-- report:end -->')[0].strip().strip('`').strip()
    assert block.startswith('mmext_init: initialization report for ')
    text = page_text(site, page)
    assert all(line in text for line in block.splitlines())


def test_readme_is_a_landing_page_linking_the_site(site):
    """At most 200 lines, and every relative link names a file that
    exists; each docs/*.md one is a page the site built."""
    text = readme()
    assert len(text.splitlines()) <= 200
    links = re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', text)
    pages = [link for link in links if link.startswith('docs/')]
    assert len(pages) >= 10, links
    for link in links:
        assert os.path.exists(os.path.join(REPO, link)), link
    for link in pages:
        built = os.path.join(site, link[len('docs/'):-len('.md')] + '.html')
        assert os.path.exists(built), link


def test_a_warning_fails_the_build(tmp_path):
    """The build's -W really turns a warning (a dangling reference) into
    a failure naming it."""
    source = str(tmp_path / 'docs')
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns('_build'))
    with open(os.path.join(source, 'index.md'), 'a') as f:
        f.write('\nSee {ref}`no-such-label`.\n')
    proc = build(source, str(tmp_path / 'html'))
    assert proc.returncode != 0 and 'no-such-label' in proc.stderr
