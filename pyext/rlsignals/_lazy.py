"""Lazy attributes of a package (PEP 562), so that importing a package costs only what it uses.

``import rlsignals`` and ``rlsignals --help`` must not pay for torch, dynamo or triton: a
package ``__init__`` lists its public names and the module that defines each, and the module
is imported on first access of one of its names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping


def lazy_attributes(package: str, exports: Mapping[str, str],
                    namespace: dict) -> tuple[Callable[[str], object], Callable[[], Iterable[str]]]:
    """(``__getattr__``, ``__dir__``) for ``package`` whose names ``exports`` maps to the
    (absolute) module that defines each; a name, once read, is kept in ``namespace``
    (the package's globals)."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> Iterable[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
