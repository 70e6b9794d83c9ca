"""Old public names kept as deprecated aliases: a promise kept while users move to the new name.

A module lists ``{old_name: new_name}`` and sets ``__getattr__ = renamed(__name__, {...}, globals())``:
reading the old name (``module.old`` or ``from module import old``) warns with
``DeprecationWarning`` and returns the very object of the new name. Nothing warns at
import of the module itself, and the old names stay out of ``__all__`` and ``dir()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["renamed", "warn_renamed"]


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (both spelled as the user would write them)."""
    warnings.warn(f"{old} is deprecated: use {new}, which is the same.", DeprecationWarning, stacklevel=stacklevel)


def renamed(module: str, aliases: Mapping[str, str], namespace: Mapping[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving each old name of ``aliases`` as its new name, with a warning.

    Example:
        >>> import warnings
        >>> getattr_ = renamed("m", {"old": "new"}, {"new": 42})
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     value = getattr_("old")
        >>> value, str(caught[0].message)
        (42, 'm.old is deprecated: use m.new, which is the same.')
    """

    def __getattr__(name: str) -> Any:
        new = aliases.get(name)
        if new is None:
            msg = f"module {module!r} has no attribute {name!r}"
            raise AttributeError(msg)
        warn_renamed(f"{module}.{name}", f"{module}.{new}")
        return namespace[new]

    return __getattr__
