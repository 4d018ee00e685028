"""Hub ids (``org/name`` or ``org/name@revision``) resolved to local folders through the Hugging Face cache.

Models may also go by a bare name, the hub's older canonical ids (``gpt2``, ``bert-base-uncased``, which the
hub still redirects); adapters are always ``org/name``, so a mistyped adapter folder is not taken for an id.

Wherever a model or adapter folder is accepted (``model.name_or_path``, ``analyze base=``, adapter
inputs), a hub id may stand instead: ``huggingface_hub.snapshot_download`` finds its snapshot in the
standard cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), and fetches
it only when the network is allowed (``HF_HUB_OFFLINE`` unset). A local path always wins over an id.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lora_analysis.embedded import embedded_model_dir
from lora_analysis.errors import LoraAnalysisError, first_line
from lora_analysis.paths import user_path

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_BARE_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")


def split_hub_id(text: str, bare: bool = False) -> tuple[str, str | None] | None:
    """``("org/name", "rev")`` for ``org/name@rev``, ``("org/name", None)`` for ``org/name``; None otherwise.
    ``bare``: a name without an org (``gpt2``) is an id too (models only, see the module's docstring)."""
    found = _HUB_ID.match(text) or (_BARE_ID.match(text) if bare else None)
    return (found["repo"], found["revision"]) if found else None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """The cache ``huggingface_hub`` searches (its own constant, so its rules for the variables hold)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def env_cache_dir() -> Path:
    """``cache_dir()`` from the environment, by ``huggingface_hub``'s own rules, without importing it
    (0.3 s): ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache``). A test holds it equal to the library's constant."""

    def expand(path: str) -> str:
        return os.path.expandvars(os.path.expanduser(path))

    home = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    default = os.path.join(expand(os.getenv("HF_HOME", home)), "hub")
    return Path(expand(os.getenv("HF_HUB_CACHE", os.getenv("HUGGINGFACE_HUB_CACHE", default))))


def in_cache(repo: str) -> bool:
    """Whether the cache holds anything of model ``repo`` (its ``models--org--name`` folder)."""
    return (env_cache_dir() / f"models--{repo.replace('/', '--')}").is_dir()


def resolve(name_or_path: str, revision: str | None = None, *, what: str = "model", fetch: bool = True) -> Path:
    """A local folder for an embedded model (``embedded:minilm``, ``embedded:smollm2``), a folder path, or a
    hub id in the cache (fetched when online).

    ``revision`` applies to a bare id; ``org/name@rev`` names its own. Raises one line naming the id and
    the cache searched when the id is not there (and cannot be fetched). ``fetch=False``: the cache only,
    never the network; an id with no folder in the cache is refused without importing ``huggingface_hub``.
    """
    if name_or_path.startswith("embedded:"):
        return embedded_model_dir(name_or_path)
    path = user_path(name_or_path)
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        return path
    parsed = split_hub_id(name_or_path, bare=what != "adapter")
    if parsed is None:
        form = "org/name[@revision]" if what == "adapter" else "[org/]name[@revision]"
        raise LoraAnalysisError(f"{what} {name_or_path!r} is neither a folder nor a hub id ({form})")
    repo, own_revision = parsed
    local_only = offline() or not fetch
    if not fetch and not in_cache(repo):
        raise LoraAnalysisError(f"{what} {name_or_path!r}: no such folder, and not in the Hugging Face cache "
                                f"{env_cache_dir()}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=own_revision or revision, local_files_only=local_only))
    except Exception as error:  # noqa: BLE001 - not cached, offline, no network, bad id: one line either way
        how = "HF_HUB_OFFLINE is set" if offline() else "it could not be downloaded" if fetch else "it is not fetched"
        raise LoraAnalysisError(
            f"{what} {name_or_path!r}: no such folder, and not in the Hugging Face cache {cache_dir()} and {how} "
            f"({first_line(error)})"
        ) from None


def is_hub_id(name_or_path: str, bare: bool = False) -> bool:
    """A string that names a hub repository rather than an existing local path (``bare``: see split_hub_id)."""
    return not user_path(name_or_path).exists() and split_hub_id(name_or_path, bare) is not None
