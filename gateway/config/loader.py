"""Reading a config file: YAML, `${NAME}` substitution, validation, and problems that name
their key and line.

`load_config` reads one YAML file, replaces `${NAME}` / `${NAME:-default}` placeholders in string
values from the environment, validates the result against the schema (unknown keys are errors)
and returns the frozen values. Every problem is a `ConfigError` whose message names the file,
the key path (``upstreams[1].transport``), the line and the reason, one line per problem.
"""

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config._convert import to_values
from gateway.config.schema import MODEL_AT, SECTIONS, GatewayModel, Loc
from gateway.config.values import GatewayConfig
from gateway.errors import ConfigError, ConfigProblem

__all__ = ["ConfigError", "ConfigProblem", "config_path_from", "load_config"]


def config_path_from(arg: str | None) -> Path:
    """The config file to use: `arg`, else ``$MCPGW_CONFIG``, else ``./config.yaml``."""
    if arg:
        return Path(arg)
    from_env = os.environ.get("MCPGW_CONFIG")
    return Path(from_env) if from_env else Path("config.yaml")


def load_config(path: str | Path) -> GatewayConfig:
    """Read, substitute, validate and convert one config file; raise `ConfigError` if it is not valid."""
    shown = Path(path)
    absolute = Path(os.path.abspath(shown.expanduser()))
    data, root = _read(shown, absolute)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _error(shown, [ConfigProblem("", _line(root, ()), "the top level must be a mapping of keys")])
    # An empty section (`upstreams:` with nothing under it) reads as null; take it as "defaults".
    data = {k: v for k, v in data.items() if not (v is None and k in SECTIONS)}

    problems: list[tuple[Loc, str]] = []
    data = _expand(data, (), os.environ, problems)
    if problems:
        raise _located(shown, root, problems)
    try:
        model = GatewayModel.model_validate(data)
    except ValidationError as exc:
        raise _error(shown, _pydantic_problems(exc, root)) from None
    config = to_values(model, absolute, problems)
    if problems:
        raise _located(shown, root, problems)
    return config


def _read(shown: Path, absolute: Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = absolute.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        where = "" if str(shown) == str(absolute) else f" (looked for {absolute})"
        raise _error(shown, [ConfigProblem("", None, f"config file not found{where}")]) from exc
    except OSError as exc:
        raise _error(shown, [ConfigProblem("", None, f"cannot read config file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise _error(shown, [ConfigProblem("", None, f"config file is not UTF-8 text: {exc}")]) from exc

    # One parse yields both the node tree (for line numbers) and the data SafeLoader builds from it.
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise _error(shown, [ConfigProblem("", line, f"invalid YAML: {what}")]) from exc
    except yaml.YAMLError as exc:
        raise _error(shown, [ConfigProblem("", None, f"invalid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    return data, root


# `$${` is the escape for a literal `${`; a `${` that is not a well-formed placeholder is an error
# rather than passed through, so a typo cannot smuggle a literal placeholder into a header.
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def _expand(value: Any, loc: Loc, env: Mapping[str, str], problems: list[tuple[Loc, str]]) -> Any:
    if isinstance(value, str):
        return _substitute(value, loc, env, problems) if "${" in value else value
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    return value


def _substitute(text: str, loc: Loc, env: Mapping[str, str], problems: list[tuple[Loc, str]]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name is None:
            problems.append(
                (loc, "malformed placeholder: write ${NAME} or ${NAME:-default} ($${ for a literal ${)")
            )
            return match.group(0)
        value = env.get(name)
        if default is not None and not value:  # shell semantics: `:-` also covers set-but-empty
            return default
        if value is None:
            problems.append((loc, f"environment variable {name} is not set (use ${{{name}:-default}})"))
            return ""
        return value

    return _PLACEHOLDER.sub(replace, text)


def _error(file: Path, problems: Sequence[ConfigProblem]) -> ConfigError:
    lines = []
    for p in problems:
        where = f"{file}:{p.line}" if p.line is not None else str(file)
        lines.append(f"{where}: {p.key}: {p.reason}" if p.key else f"{where}: {p.reason}")
    return ConfigError("\n".join(lines), file=file, problems=problems)


def _located(file: Path, root: yaml.Node | None, problems: Sequence[tuple[Loc, str]]) -> ConfigError:
    return _error(file, [ConfigProblem(_key_path(loc), _line(root, loc), why) for loc, why in problems])


def _key_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _line(root: yaml.Node | None, loc: Loc, *, of_key: bool = False) -> int | None:
    """Line of the node at `loc`, or of its nearest existing ancestor (e.g. for a missing key)."""
    if root is None:
        return None
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            # Last match wins, as it does when SafeLoader builds the dict.
            pairs = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not pairs:
                break
            key_node, value_node = pairs[-1]
            node = key_node if of_key and i == len(loc) - 1 else value_node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


_YAML_TYPE = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _pydantic_problems(exc: ValidationError, root: yaml.Node | None) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        of_key = False
        if loc and loc[-1] == "[key]":  # the error is about a mapping key, not its value
            loc, of_key = loc[:-1], True
        if kind == "extra_forbidden":
            of_key = True
            model = MODEL_AT.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
            allowed = list(model.model_fields) if model else []
            reason = f"unknown key {loc[-1]!r}"
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            if close:
                reason += f" (did you mean {close[0]!r}?)"
            if allowed:
                reason += f"; allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            reason = "required key is missing"
        elif kind == "value_error":
            reason = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            # Pydantic says "dictionary" and names private model classes; YAML users think "mapping".
            reason = "Input should be a mapping" if kind in ("model_type", "dict_type") else err["msg"]
            if kind.endswith("_type") or kind in ("literal_error", "enum"):
                got = _YAML_TYPE.get(type(err["input"]), type(err["input"]).__name__)
                reason += f", got {got}" if kind != "literal_error" else f", got {err['input']!r}"
        if of_key and kind != "extra_forbidden":
            reason += " (in a key)"
        problems.append(ConfigProblem(_key_path(loc), _line(root, loc, of_key=of_key), reason))
    return problems
