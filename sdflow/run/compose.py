"""From a command line to a config: the rules every door applies to overrides, then Hydra's composition.

The rules hold wherever overrides come from (the ``sdflow`` command, a sweep under any sweeper, the web API,
``reproduce``, the Python API):
- no resolver may read the environment or run code: ``prompt='${oc.env:SECRET}'`` would be resolved into PNGs
  and logs. Hydra's own settings (``hydra.*``) may use Hydra's time and job resolvers only (``${now:...}``);
- in a single run a comma or a bracket in a text value is text (``prompt=a cat, blue``);
- in a sweep a bare comma in a text value is refused, with both spellings, since it would split one text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig

from ..engine import NO_RESOLVERS, InvalidWorkflow, Problem, ValidationError, resolver_in

# Free-text config keys: a comma or a bracket in them is text (A1111 weights: "a (red:1.2) circle").
TEXT_KEYS = ("prompt", "negative_prompt", "safety_concept")
_SWEEP_FUNCTIONS = ("choice(", "range(", "interval(", "glob(", "sort(", "shuffle(", "tag(")
# Resolvers a hydra.* value may use: the time (run folders by date) and Hydra's own settings, and sdflow's
# run-folder claim; none of them reads the environment or runs code given on the command line.
HYDRA_RESOLVERS = ("now", "hydra", "sdflow_new_folder")
_RESOLVER = re.compile(r"\$\{\s*([^}:\s]+)\s*:")  # the name of each resolver a value calls, nested ones too


def key_of(override: str) -> str:
    """The config key an override sets (``+seed=1`` and ``~seed`` set ``seed``)."""
    return override.partition("=")[0].strip().lstrip("+~")


def quote_text_values(overrides: list[str]) -> list[str]:
    """Quote single-run override values that Hydra's grammar would misread, so ``prompt=a cat, blue`` is text.

    Hydra reads an unquoted comma as a sweep and refuses it outside ``-m``; in a single run a comma can
    only be text. A text key's brackets are prompt weighting (``prompt=a (red:1.2) circle``). Lists
    (``seed=[1,2]``), sweep functions and values the user already quoted are left alone.
    """
    quoted = []
    for override in overrides:
        key, sep, value = override.partition("=")
        plain = sep and value[:1] not in ("[", "{", "'", '"') and not value.startswith(_SWEEP_FUNCTIONS)
        weighted = key.lstrip("+~") in TEXT_KEYS and any(c in value for c in "()[]")
        if plain and (weighted or ("," in value and "(" not in value)):
            quote = "'" if '"' in value else '"'
            override = f"{key}={quote}{value}{quote}"
        quoted.append(override)
    return quoted


def resolver_problem(key: str, value: str) -> str | None:
    """Why ``key=value`` may not be given (a resolver it is not allowed), or None."""
    if key.startswith("hydra."):
        refused = [name for name in _RESOLVER.findall(value) if name not in HYDRA_RESOLVERS]
        if refused:
            return (f"'${{{refused[0]}:...}}': Hydra's settings may use the resolvers {', '.join(HYDRA_RESOLVERS)} "
                    "only (nothing that reads the environment or runs code)")
        return None
    resolver = resolver_in(value)
    return f"'{resolver}': {NO_RESOLVERS}" if resolver else None


def comma_problems(overrides: list[str]) -> list[str]:
    """A bare comma list on a text key would silently sweep the halves of one text: refuse it, showing both spellings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import QuotedString, ValueType

    problems = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element().split("@")[0].lstrip("+~")
        if key not in TEXT_KEYS or override.value_type != ValueType.SIMPLE_CHOICE_SWEEP:
            continue
        items = override.value().list
        if all(isinstance(item, QuotedString) for item in items):
            continue  # every text quoted: the commas between them can only mean a sweep
        texts = [item.text if isinstance(item, QuotedString) else str(item) for item in items]
        whole = ", ".join(texts)
        choices = ",".join(f'"{t}"' for t in texts)
        problems.append(
            f"{key}: a comma in a swept text value is ambiguous: '{override.input_line}' would run {len(texts)} "
            f"jobs ({' | '.join(texts)}). For one {key} that contains a comma, quote it: '{key}=\"{whole}\"'. "
            f"For a sweep of {key}s, quote each one: '{key}={choices}' (or {key}=choice({choices})).")
    return problems


def check_command_line(overrides: list[str], sweep: bool = False) -> None:
    """Refuse what no door may be given (resolvers; in a ``sweep``, a bare comma in a text value), before anything."""
    problems = []
    for override in overrides:
        key, sep, value = override.partition("=")
        reason = resolver_problem(key_of(override), value) if sep else None
        if reason:
            problems.append(Problem("command line", None, key_of(override), reason))
    if problems:
        raise ValidationError(problems)
    commas = comma_problems(overrides) if sweep else []
    if commas:
        raise InvalidWorkflow("the sweep is ambiguous:\n" + "\n".join(f"  - {p}" for p in commas))


def output_folder_problem(folder: str, key: str) -> Problem | None:
    """Whether a run could create ``folder`` (its nearest existing parent writable), asked before anything runs.

    ``folder`` may still hold interpolations (``outputs/${now:...}``): the part before the first one counts.
    """
    literal = folder.split("${", 1)[0] or "."
    target = Path(literal).expanduser().absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return None
    what = "is not a folder" if probe.exists() and not probe.is_dir() else "cannot be written by this user"
    return Problem("command line", None, key, f"images would go under '{target}', but '{probe}' {what}; "
                   f"choose another folder ({key}=...) or run from a folder you can write")


def compose_config(overrides: list[str] | None = None, config_dirs: list[str] = ()) -> DictConfig:
    """The Hydra config for ``overrides`` (one run), composed from sdflow/conf exactly as the command would.

    ``config_dirs``: the user's own config folders (the command's ``--config-dir``), searched as Hydra does.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = quote_text_values(list(overrides or []))
    check_command_line(overrides)
    if config_dirs:
        folders = ",".join(f"file://{Path(d).resolve()}" for d in config_dirs)
        overrides = [f"hydra.searchpath=[{folders}]"] + overrides
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    with initialize_config_module(config_module="sdflow.conf", version_base=None):
        return compose(config_name="config", overrides=overrides)
