"""``lora-analysis <command> [overrides]``: one entry point, one module per subcommand.

Every subcommand takes Hydra overrides (``key=value``) and answers ``--help``. Bad input of any kind
ends in one line on stderr, ``lora-analysis <command>: error: ...``, and exit status 2.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback
from itertools import takewhile
from pathlib import Path

from lora_analysis.errors import LoraAnalysisError, first_line, printable

COMMANDS = {
    "train": ("lora_analysis.cli.train", "train LoRA adapters (one run, or a sweep with -m)"),
    "analyze": ("lora_analysis.cli.analyze", "subspace analysis of a sweep or of adapter folders"),
    "report": ("lora_analysis.cli.report", "figures and a report of a sweep, an analysis or a folder of adapters"),
    "compare": ("lora_analysis.cli.compare", "analyse two adapters and report on the pair"),
    "across": ("lora_analysis.cli.across", "the findings of several sweeps side by side (model x task)"),
    "reproduce": ("lora_analysis.cli.reproduce", "train, analyse and report the paper's Section 7"),
    "ablate": ("lora_analysis.cli.ablate", "a rank or target ablation: rates tuned on validation, seeds, report"),
    "recommend": ("lora_analysis.cli.recommend", "recommend a rank per module role from a sweep"),
}


def usage() -> str:
    lines = ["usage: lora-analysis <command> [key=value ...] [--help]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from lora_analysis.hydra_compose import did_you_mean

        hint = did_you_mean(command, list(COMMANDS))
        print(f"lora-analysis: error: unknown command {printable(repr(command))}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    # Hydra would print a trimmed traceback and exit 1; we want the exception, to print one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from lora_analysis.cli.schemas import register_schemas

    register_schemas()
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(rest) or 0)
    except BrokenPipeError:  # output piped into head or less, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as done:  # a Hydra job that has printed its own one-line error
        return done.code if isinstance(done.code, int) else 1
    except KeyboardInterrupt:
        print(f"lora-analysis {command}: interrupted; finished runs are kept", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every error becomes one line, see one_line()
        message = one_line(error, sweeps=command == "train")
        if message is None:
            raise
        print(f"lora-analysis {command}: error: {printable(message)}", file=sys.stderr)
        return 2


def one_line(error: BaseException, sweeps: bool = False) -> str | None:
    """A one-line message for user errors (ours, Hydra's, OmegaConf's); None for real bugs. ``sweeps``:
    the command takes ``-m`` (``train``), which a comma-separated value may have been meant for."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for err in chain:
        if isinstance(err, LoraAnalysisError):
            return str(err)
    for err in chain:
        if isinstance(err, HydraException | OmegaConfBaseException) or _raised_by_config_parser(err):
            return _config_message(chain, sweeps)
    for err in chain:  # a path the user gave that cannot be read or written (a file for a folder, read-only)
        if isinstance(err, OSError) and err.filename and not isinstance(err, BlockingIOError):
            return f"cannot use {err.filename}: {err.strerror or first_line(err)}"
    for err in chain:  # a full disk where no file name was at hand (pyarrow's and torch's writers)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the device: {first_line(err)}; free some and run the command again"
    return None


def _raised_by_config_parser(error: BaseException) -> bool:
    """An error Hydra or OmegaConf itself raised, not in its own exception types, while reading the command
    line: the user's input, not a bug of ours (``model=1e308``: "Config group override must be a string";
    ``lora.layers.x={a:1}`` under a null: an AssertionError)."""
    if not isinstance(error, ValueError | TypeError | AssertionError | KeyError | IndexError):
        return False
    if error.__traceback__ is None:
        return False
    import hydra
    import omegaconf

    innermost = Path(traceback.extract_tb(error.__traceback__)[-1].filename).resolve()
    return any(innermost.is_relative_to(Path(package.__file__).resolve().parent) for package in (hydra, omegaconf))


def _config_message(chain: list[BaseException], sweeps: bool = False) -> str:
    """Hydra's context and OmegaConf's reason from an error chain, on one line.

    Template duplicates (``'$VALUE'``) are dropped; Hydra's list of available options is kept.
    """
    parts: list[str] = []
    for err in chain:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        if not lines or "$VALUE" in lines[0]:
            continue
        text = lines[0].rstrip(".")
        if text.startswith("Ambiguous value for argument"):  # Hydra's three ways out, on one line
            key, _, value = text.split("'")[1].partition("=")
            sweep = "; a sweep over it: add -m" if sweeps else ""
            text += f" (a list: {key}=[{value}]; one string: {key}='{value}'{sweep})"
        if "Available options" in str(err):
            after = str(err).split("Available options", 1)[1].splitlines()[1:]
            options = [line.strip() for line in takewhile(lambda x: x.startswith("\t"), after)]
            text += f" (options: {', '.join(options)})"
        if text not in parts and not any(text in p for p in parts):
            parts.append(text)
    return "config: " + "; ".join(parts) + _did_you_mean(chain)


def _did_you_mean(chain: list[BaseException]) -> str:
    """``" (did you mean 'optim.steps'?)"`` for a key OmegaConf does not know, from the keys beside it."""
    from lora_analysis.hydra_compose import did_you_mean

    for err in chain:
        key, parent = getattr(err, "key", None), getattr(err, "parent_node", None)
        if not isinstance(key, str) or parent is None or not hasattr(parent, "keys"):
            continue
        known = [str(k) for k in parent.keys()]
        if key in known:  # a bad value, not a bad key
            return ""
        full = str(getattr(err, "full_key", None) or key)
        hint = did_you_mean(key, known, full[: len(full) - len(key)])
        if hint:
            return hint
    return ""


if __name__ == "__main__":
    sys.exit(main())
