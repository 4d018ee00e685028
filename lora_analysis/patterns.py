"""Regular expressions from files and the command line, matched in linear time (RE2).

Adapter configs come from strangers, and Python's backtracking ``re`` can take exponential time on a
crafted pattern (``([a-z.0-9]*)*X``). Every pattern from user input is compiled here with RE2 (no
backtracking: time linear in the text), keeping the meaning Python's ``re`` gives it; a pattern RE2
cannot express (backreferences, lookaround, possessive quantifiers) is refused in one line naming it
and where it came from.
Differences that remain: RE2's ``\\d``, ``\\w``, ``\\s`` are ASCII only (module paths are ASCII).
"""

from __future__ import annotations

import re
from functools import lru_cache

import re2

from lora_analysis.errors import LoraAnalysisError, first_line

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print its own line on stderr for every refused pattern
_KEY_TEMPLATES = (r"(.*\.)?({})$", r"(.*\.)?({})\n?\z")  # a pattern key as PEFT uses it; the same for RE2
_MAX_LENGTH = 10_000  # longer "patterns" are not module-path rules; RE2's memory bound stays small


def _reason(error: BaseException) -> str:
    text = error.args[0] if error.args else error
    return (text.decode(errors="replace") if isinstance(text, bytes) else first_line(error)).strip()


@lru_cache(maxsize=4096)
def _compile(pattern: str, python: str, linear: str, source: str) -> re2._Regexp:
    """``pattern`` put into the template ``linear`` for RE2, after ``python`` (its use by PEFT) is checked."""
    if not isinstance(pattern, str):
        raise LoraAnalysisError(f"{source}: pattern {pattern!r} is not a string")
    if len(pattern) > _MAX_LENGTH:
        raise LoraAnalysisError(f"{source}: pattern of {len(pattern)} characters is too long (at most {_MAX_LENGTH})")
    try:
        re.compile(python.format(pattern))  # the syntax check: valid as Python's re (and PEFT) uses it
    except (re.error, RecursionError, OverflowError) as error:
        reason = first_line(error)
        raise LoraAnalysisError(f"{source}: {pattern!r} is not a valid regular expression ({reason})") from None
    try:
        return re2.compile(linear.format(pattern), options=_OPTIONS)
    except re2.error as error:
        raise LoraAnalysisError(
            f"{source}: pattern {pattern!r} cannot be matched in linear time ({_reason(error)}); "
            "rewrite it without backreferences, lookaround or possessive quantifiers"
        ) from None


def check(pattern: str, source: str) -> None:
    """Raise ``LoraAnalysisError`` unless ``pattern`` is valid and RE2 can run it; ``source`` names its origin."""
    _compile(pattern, "{}", "{}", source)


def check_key(key: str, source: str) -> None:
    """Raise unless ``key`` is a valid ``rank_pattern``/``alpha_pattern`` key that RE2 can run."""
    _compile(key, *_KEY_TEMPLATES, source)


def fullmatch(pattern: str, text: str, source: str) -> bool:
    """``re.fullmatch(pattern, text)``, in linear time."""
    return _compile(pattern, "{}", "{}", source).fullmatch(text) is not None


def pattern_key(pattern_keys, module_path: str, source: str = "rank_pattern") -> str:
    """The ``rank_pattern``/``alpha_pattern`` key that applies to ``module_path`` (else the path itself).

    PEFT's rule (``peft.utils.other.get_pattern_key``): the first key ``k`` with
    ``re.match(rf"(.*\\.)?({k})$", path)``. Python's ``$`` also matches before a final newline, hence
    ``\\n?\\z`` here. Importing peft costs seconds, so the rule is restated; a test checks it against peft.
    """
    for key in pattern_keys:
        if _compile(key, *_KEY_TEMPLATES, source).match(module_path):
            return key
    return module_path
