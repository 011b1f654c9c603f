"""Sphinx configuration of the documentation (MyST Markdown pages).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``scripts/test`` runs it;
warnings are errors).
"""

import re
from pathlib import Path

_init = (Path(__file__).resolve().parent.parent / "django_agent_session" / "__init__.py").read_text()

project = "django-agent-session"
author = "django-agent-session developers"
copyright = "django-agent-session developers"
release = version = re.search(r'__version__ = "([^"]+)"', _init).group(1)

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# GitHub-style anchors for headings down to ####, so `page.md#heading` links resolve
myst_heading_anchors = 4

html_theme = "alabaster"
html_title = f"django-agent-session {release}"
