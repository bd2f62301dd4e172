"""One registry for methods and attacks: names to method classes or attack instances.

Registering a name twice with two different objects is an error (two files claiming one name
would otherwise silently replace each other), and so is registering something that is not of
the registry's base type. A registry finds its entries by importing every module of its
package (``pkgutil``: adding a method or an attack is one file, nothing to list anywhere) and
then the modules named by the installed packages' entry points (group ``unlearn_audit.methods``
or ``unlearn_audit.attacks``), so a third-party package adds its own::

    [project.entry-points."unlearn_audit.methods"]
    my_method = "my_package.my_method"      # a module whose import registers the method
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from .errors import UserInputError


class Registry(dict):
    """``{name: entry}``, filled by ``register`` and by importing its modules on first lookup.

    Args:
        what: the noun in messages (``method``, ``attack``).
        base: every entry is this class or a subclass of it (``check`` picks the class out of
            an entry that is not one itself).
        package: the package whose modules are imported to find entries.
        group: the entry-point group of third-party entries.
    """

    def __init__(self, what: str, base: type, package: str, group: str, check=None):
        super().__init__()
        self.what, self.base, self.package, self.group = what, base, package, group
        self.check = check or (lambda entry: entry)
        self._loaded = False

    def register(self, name: str, entry: Any) -> Any:
        cls = self.check(entry)
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.what} {name!r}: {cls!r} is not a subclass of {self.base.__name__}")
        old = self.get(name)
        if old is not None and self.check(old) is not cls:
            raise ValueError(f"{self.what} {name!r} is registered twice: by {self.check(old).__module__} "
                             f"and by {cls.__module__}")
        self[name] = entry
        return entry

    def load(self, refresh: bool = False) -> None:
        """Import every module of the package and every entry point of the group (once, unless
        ``refresh``: a test that installs an entry point asks again)."""
        if self._loaded and not refresh:
            return
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
        for ep in entry_points(group=self.group):
            try:
                ep.load()
            except Exception as e:  # a broken plug-in names itself instead of a deep traceback
                raise UserInputError(f"the {self.what} plug-in {ep.name!r} ({ep.value}) failed to load: {e}") from e
        self._loaded = True

    def lookup(self, name: str) -> Any:
        self.load()
        if name not in self:
            raise UserInputError(f"unknown {self.what} {name!r}; choose one of: {', '.join(sorted(self))}")
        return self[name]
