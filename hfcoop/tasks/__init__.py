"""Tasks built on hfcoop: a task's data, its generators and its runner live here, above the trainers they use.

- :mod:`hfcoop.tasks.text_to_equation`: GENERE's synthetic text-to-equation task (Sec. 3.2) and its black-box
  data generators.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any


def load_user_object(spec: str, what: str = "generators") -> Any:
    """The object a recipe names as ``module:attribute`` or ``path/to/file.py:attribute``. This RUNS THE USER'S CODE
    (the module's top level), like ``trust_remote_code``, so it is only ever code the user chose explicitly:

    - ``package.module:attribute``: an installed module (site-packages, ``pip install -e``, ``PYTHONPATH``), never
      one that merely sits in the folder the command runs in. ``python -m hfcoop.cli`` and ``accelerate launch -m``
      put that folder first on ``sys.path``, so a stray ``tasks.py`` in a shared or downloaded folder would be
      imported and run; the current folder is therefore left out of the search.
    - ``path/to/file.py:attribute`` (``./file.py`` for the current folder): that file, by its path.
    """
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{what} '{spec}' must be `package.module:ATTRIBUTE` (an installed module) or "
                         "`path/to/file.py:ATTRIBUTE` (a file of yours).")  # fmt: skip
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        module = _import_file(os.path.expanduser(module_name), what)
    else:
        module = _import_installed(module_name, what)
    if not hasattr(module, attribute):
        raise ValueError(f"{what}: {module.__name__} ({getattr(module, '__file__', '?')}) has no attribute "
                         f"'{attribute}'.")  # fmt: skip
    return getattr(module, attribute)


def _is_current_folder(entry: str) -> bool:
    return entry in ("", ".") or os.path.abspath(entry) == os.getcwd()


def _import_installed(module_name: str, what: str) -> Any:
    """``import module_name`` with the current folder left out of ``sys.path`` for the search (restored after)."""
    saved = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if not _is_current_folder(entry)]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not module_name.startswith(err.name):
            raise  # the module was found but imports something missing: its own error says what
        local = module_name.split(".")[0]
        here = os.path.exists(local + ".py") or os.path.isdir(local)
        hint = (f" There is a {local} in the current folder, but hfcoop does not import code from whatever folder it "
                f"runs in: name the file, e.g. `./{module_name.replace('.', '/')}.py:ATTRIBUTE`.") if here else ""  # fmt: skip
        raise ValueError(f"{what}: no installed module '{module_name}'. Install it (`pip install -e .` in its "
                         f"project) or give its file, `path/to/file.py:ATTRIBUTE`.{hint}") from None  # fmt: skip
    finally:
        sys.path[:] = saved
    return module


def _import_file(path: str, what: str) -> Any:
    """The module in file ``path`` (not added to ``sys.path``: its folder's other files are not importable)."""
    if not os.path.isfile(path):
        raise ValueError(f"{what}: the file '{path}' does not exist (relative paths start from {os.getcwd()}).")
    name = "hfcoop_user_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{what}: '{path}' is not a Python file (give a .py file).")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module
