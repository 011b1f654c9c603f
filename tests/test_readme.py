"""The README and the docs stay true.

Every setting of ``DEFAULTS`` is in the configuration table of ``docs/configuration.md`` and
every check id is listed there; the README names the two commands and links only to docs
pages that exist. (``tests/test_quickstart.py`` runs the README's Quick start.)
"""

import re
from pathlib import Path

from django_agent_session.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_configuration_table_lists_every_setting():
    table = CONFIGURATION.split("## System checks")[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.M))
    assert documented == set(DEFAULTS)


def test_every_check_id_is_documented():
    source = (ROOT / "django_agent_session" / "checks.py").read_text()
    ids = set(re.findall(r'id="(django_agent_session\.[EWI]\d{3})"', source))
    checks = CONFIGURATION.split("## System checks", 1)[1]
    assert ids and {i for i in ids if f"`{i}`" not in checks} == set()


def test_two_commands_are_named():
    assert "./scripts/demo" in README and "./scripts/test" in README


def test_readme_links_to_docs_pages_that_exist():
    targets = re.findall(r"\]\((docs/[^)#\s]+)", README)
    assert targets and [t for t in targets if not (ROOT / t).exists()] == []
