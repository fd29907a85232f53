"""Old path of :mod:`hfcoop.tasks.text_to_equation`, kept so that recipes and code naming
``hfcoop.genere_tasks:EQUATION_GENERATORS`` (or importing from it) keep working: the same module object."""

import sys

from .tasks import text_to_equation

sys.modules[__name__] = text_to_equation
