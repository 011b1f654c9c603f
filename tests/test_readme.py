"""The README stays true: every setting is in its configuration table, every check id listed."""

import re
from pathlib import Path

from django_agent_session.conf import DEFAULTS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_configuration_table_lists_every_setting():
    section = README.split("## Configuration", 1)[1].split("### System checks")[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    assert documented == set(DEFAULTS)


def test_every_check_id_is_documented():
    source = (Path(__file__).resolve().parent.parent / "django_agent_session" / "checks.py"
              ).read_text()
    ids = set(re.findall(r'id="(django_agent_session\.[EW]\d{3})"', source))
    assert ids and all(f"`{i}`" in README for i in ids)


def test_two_commands_are_named():
    assert "./scripts/demo" in README and "./scripts/test" in README
