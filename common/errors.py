"""A user mistake (missing data, bad labels, wrong checkpoint, impossible flags) is reported as one clear line.

Scripts catch ``UserError`` in ``main`` and print ``error: <message>`` instead of a traceback (see
``common.training.run_main``). Messages say what is wrong and how to fix it.
"""


class UserError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""
