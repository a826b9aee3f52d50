"""The stages' comments and docstrings stand on their own: they describe PersonaVLM's formats themselves and
cite no section of a document kept outside the repository."""

from __future__ import annotations

from pathlib import Path

from persona_factory import stages


def test_stage_modules_cite_no_outside_sections():
    cited = [f"{path.name}:{n}: {line.strip()}" for path in sorted(Path(stages.__file__).parent.glob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if "§" in line]
    assert cited == []
