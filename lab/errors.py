"""The one error type of the ICL lab: a bad config, pool or model input, with a message for the user.

Anything raised as `LabError` is shown to the user as it is (CLI: one line on stderr, exit 2;
UI: the run's error text), so every message names the flag or file at fault and what is allowed.
"""

from __future__ import annotations


class LabError(ValueError):
    """A lab run that cannot start or go on; the message says why and what is allowed.

    `option` is the `LabConfig` field at fault, where one is: the command line names it as its
    flag (`n_test` as `--n-test`), the UI by its field name.
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option
