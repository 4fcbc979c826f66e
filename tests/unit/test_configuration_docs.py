"""The README's configuration table is the operator's reference: every variable a deployable reads is in it, every
variable in it is read by one, and a default it states as a plain value is the code's default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

from functions.settings import FunctionsSettings
from gpu_runner.settings import RunnerSettings
from soul_common.settings import ReconcileSettings

README = Path(__file__).resolve().parents[2] / "README.md"
SETTINGS: tuple[type[BaseSettings], ...] = (FunctionsSettings, RunnerSettings, ReconcileSettings)
ENV_NAME = re.compile(r"`([A-Z][A-Z0-9_]*_[A-Z0-9_]+|[A-Z]{4,})`")


def env_names(cls: type[BaseSettings]) -> dict[str, tuple[str, ...]]:
    """field -> the environment names it is read from (its aliases, else prefix + field name)."""
    prefix = cls.model_config.get("env_prefix", "")
    found = {}
    for field, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            found[field] = tuple(c for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            found[field] = (alias,)
        else:
            found[field] = (f"{prefix}{field}".upper(),)
    return found


def table_rows() -> list[tuple[list[str], list[str], str]]:
    """(variables, the variables outside parentheses, default column) of each row of the README's Configuration
    table: "`SOUL_WORKER_THREADS` (or `THREADS`)" has one default."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            outside = re.sub(r"\([^)]*\)", "", cells[0])
            rows.append((ENV_NAME.findall(cells[0]), ENV_NAME.findall(outside), cells[2]))
    return rows


def documented() -> set[str]:
    return {name for names, _, _ in table_rows() for name in names}


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_setting_a_deployable_reads_is_in_the_readme_table(cls):
    table = documented()
    missing = sorted(names[0] for names in env_names(cls).values() if not table.intersection(names))
    assert not missing, f"README.md's Configuration table lacks {missing} ({cls.__module__})"


def test_every_variable_in_the_readme_table_is_read_by_a_deployable():
    read = {name for cls in SETTINGS for names in env_names(cls).values() for name in names}
    unknown = sorted(documented() - read)
    assert not unknown, f"README.md's Configuration table names {unknown}, which no settings class reads"


_NOT_PLAIN = object()


def _plain(text: str) -> object | None:
    """A default as the table states it, when it is a plain value ("30", "0.5", "`false`", "`auto`", "unset")."""
    text = text.strip().strip("`")
    if text in ("unset", "empty"):
        return {"unset": None, "empty": ""}[text]
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"[a-z][a-z0-9_.:/-]*", text):
        return text
    return _NOT_PLAIN


def _comparable(value: object) -> object:
    if isinstance(value, bool | None):
        return value
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, int | float):
        return float(value)
    return getattr(value, "value", value)


def test_the_defaults_the_readme_table_states_are_the_codes():
    by_name = {}
    for cls in SETTINGS:
        for field, names in env_names(cls).items():
            info = cls.model_fields[field]
            if info.default_factory is None:
                for name in names:
                    by_name.setdefault(name, []).append(info.default)
    checked, wrong = 0, []
    for _, names, default_cell in table_rows():
        defaults = [d for d in re.split(r",\s+(?![^()]*\))", default_cell)]
        if len(defaults) != len(names):
            continue
        for name, stated in zip(names, defaults, strict=True):
            value = _plain(stated)
            if value is _NOT_PLAIN or name not in by_name:
                continue
            checked += 1
            if all(_comparable(code) != value for code in by_name[name]):
                wrong.append(f"{name}: README {stated!r}, code {by_name[name]!r}")
    assert checked >= 60, f"only {checked} defaults compared: has the table's shape changed?"
    assert not wrong, "README.md's Configuration table states other defaults than the code: " + "; ".join(wrong)
