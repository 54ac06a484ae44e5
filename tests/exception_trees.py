"""What a package's exception tree must hold, read from its modules (docs/design.md, Errors).

Every exception a package defines lives in its `errors.py` and is named in that module's
docstring tree, unless it is private (`_Name`): a signal raised and caught inside one module.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re


def defined_exceptions(package: str) -> dict[str, type[BaseException]]:
    """Every exception class the package's modules define, by qualified name."""
    root = importlib.import_module(package)
    modules = [root.__name__]
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if not info.name.endswith("__main__"):  # running the command is not importing it
            modules.append(info.name)
    found: dict[str, type[BaseException]] = {}
    for name in modules:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                found[value.__qualname__] = value
    return found


def misplaced(package: str) -> list[str]:
    """The package's public exceptions defined outside `<package>.errors`, or not named in its tree."""
    errors = importlib.import_module(f"{package}.errors")
    tree = errors.__doc__ or ""
    return sorted(
        f"{name} ({exception.__module__})"
        for name, exception in defined_exceptions(package).items()
        if not name.startswith("_")
        and (exception.__module__ != errors.__name__ or not re.search(rf"\b{name}\b", tree))
    )
