"""The one exception type a user sees: bad input, named with the file, value and expectation."""


class LoraAnalysisError(ValueError):
    """Bad input or a state the toolkit cannot work with.

    The command line prints ``str(error)`` as one line and exits non-zero; the Python API lets it
    propagate. Messages name the offending file, tensor or value and say what was expected.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), to quote in ours."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def printable(text: str) -> str:
    """``text`` with control characters, line separators and other unprintable ones escaped (``\\r``,
    ``\\u2028``), so that a value the user typed cannot break a one-line message into several."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def utf8(text: str) -> str:
    """``text`` with the bytes of a file name that are not UTF-8 (``os.fsdecode``'s surrogates) shown as
    ``\\xff``: writable to UTF-8 files and Parquet, and still telling two such names apart."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
