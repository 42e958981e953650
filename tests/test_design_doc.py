"""docs/design.md's patch table names every row of ``PATCHES``: each owner
and attribute (the schemes of ``CheckpointLoader`` by name)."""
import os
import re

from mmext_init.plugin.patches import PATCHES

DESIGN = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'docs', 'design.md')


def table_rows() -> list:
    with open(DESIGN) as f:
        text = f.read()
    table = text.split('| owner | attribute | why |')[1].split('\n\n')[0]
    return [line for line in table.splitlines()[2:] if line.startswith('|')]


def test_every_patch_is_in_the_design_table():
    rows = table_rows()
    for patch in PATCHES:
        owner = f'`{patch.owner_name}`'
        scheme = re.sub(r'^\(\\S\+\\:\)\?', '', patch.attribute)
        attribute = f'`{scheme}`' if scheme else "`''`"
        assert any(owner in r.split('|')[1] and attribute in r.split('|')[2]
                   for r in rows), (patch.owner_name, patch.attribute)


def test_the_table_names_nothing_else():
    owners = {p.owner_name for p in PATCHES}
    for row in table_rows():
        named = set(re.findall(r'`([^`]+)`', row.split('|')[1]))
        assert named and named <= owners, row
