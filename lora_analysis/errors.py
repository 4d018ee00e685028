"""The one exception type a user sees: bad input, named with the file, value and expectation."""


class LoraAnalysisError(ValueError):
    """Bad input or a state the toolkit cannot work with.

    The command line prints ``str(error)`` as one line and exits non-zero; the Python API lets it
    propagate. Messages name the offending file, tensor or value and say what was expected.
    """
