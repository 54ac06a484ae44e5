"""Every default of the config is written once, in the values the gateway reads.

A file that leaves a key out must load exactly the default its value class declares, so a
default written a second time (in the schema, or as a fallback in the loader) cannot drift
from the one people read.
"""

import dataclasses
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.config.schema import MODEL_AT


def defaults_loaded_otherwise(value: Any, folder: Path, given: frozenset[str] = frozenset()) -> list[str]:
    """The fields of the loaded `value` (and of the values inside it) whose declared default is not
    what was loaded, leaving out the keys in `given`, which the file set. A default path is read
    relative to the config file's folder, as the file's own paths are."""
    differ = []
    for field in dataclasses.fields(value):
        loaded = getattr(value, field.name)
        if field.name in given:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        if isinstance(default, Path):
            default = folder / default
        if default is not dataclasses.MISSING and loaded != default:
            differ.append(f"{type(value).__name__}.{field.name}: declares {default!r}, loads {loaded!r}")
        if dataclasses.is_dataclass(loaded):
            differ += defaults_loaded_otherwise(loaded, folder)
    return differ


def test_an_empty_config_loads_every_default_its_values_declare(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("", encoding="utf-8")
    assert defaults_loaded_otherwise(load_config(path), tmp_path) == []


def test_an_upstream_that_sets_only_what_it_must_loads_every_default_its_values_declare(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("upstreams: [{name: web, transport: http, url: 'https://example.com/mcp'}]\n")
    [web] = load_config(path).upstreams
    assert defaults_loaded_otherwise(web, tmp_path, frozenset({"name", "transport", "url"})) == []


def test_the_schema_declares_no_default_of_its_own() -> None:
    """A schema key's default is None (the key was not given), a section of its own, or read from
    the values; never a second copy of a value."""
    sections: set[object] = set(MODEL_AT.values())
    copies = []
    for model in MODEL_AT.values():
        for name, field in model.model_fields.items():
            if field.is_required() or field.default is None or field.default_factory in sections:
                continue
            extra = field.json_schema_extra
            if not (isinstance(extra, dict) and "default_of" in extra):
                copies.append(f"{model.__name__}.{name}")
    assert copies == []
