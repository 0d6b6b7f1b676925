"""Rewrite passes. Importing this package registers every pass module found under it.

New pass modules register themselves with @register_pass; nothing here needs editing.
"""

import importlib
import pkgutil


def _import_all() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)


_import_all()
