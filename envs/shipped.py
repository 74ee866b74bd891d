"""The configs that ship with the package, found by name from any directory.

``config="tiny"``, ``--config attack_heavy`` and ``--settings quick_start`` name files inside
``greengossip.configs`` (the repository's ``configs/`` folder, installed into the wheel). A path is still
accepted; a name that is neither a file nor a shipped config is an error that lists the names there are.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SCENARIOS = ""  # the configs/ folder itself: scenario configs
TRAINING = "train"  # configs/train/: training recipes
FAMILIES = "scenarios"  # configs/scenarios/: the scenario families, found as scenario configs too
EVOLUTION = "evolution"  # configs/evolution/: evolution-strategies runs (greengossip.training.evolution)


def shipped_dir(kind: str = SCENARIOS) -> Path:
    """The folder of shipped configs of one kind (scenarios, or ``train`` recipes)."""
    root = Path(str(resources.files("greengossip.configs")))
    return root / kind if kind else root


def shipped_names(kind: str = SCENARIOS) -> list[str]:
    """The names (file stems) of the shipped configs of one kind, sorted."""
    folder = shipped_dir(kind)
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []


def find_config(name_or_path: str | Path, kind: str = SCENARIOS, what: str = "config") -> Path:
    """The file a config argument names: an existing path as it is, else a shipped config of that name
    (with or without ``.yaml``). Raises FileNotFoundError naming the shipped ones otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise FileNotFoundError(f"{what} {str(name_or_path)!r} is a directory, not a YAML file")
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    candidate = shipped_dir(kind) / f"{stem}.yaml"
    # a bare name ("tiny") or a repository-relative path ("configs/tiny.yaml") of a shipped file
    if candidate.is_file() and (len(path.parts) == 1 or path.parent.name in ("configs", kind)):
        return candidate
    # a shipped file in a sub-folder, named from the kind's folder: --settings ablations/no_carbon_guard
    nested = shipped_dir(kind) / path.parent / f"{stem}.yaml"
    if len(path.parts) > 1 and not path.is_absolute() and ".." not in path.parts and nested.is_file():
        return nested
    family = shipped_dir(FAMILIES) / f"{stem}.yaml"  # a scenario family by its bare name: "solar_sensor_field"
    if kind == SCENARIOS and len(path.parts) == 1 and family.is_file():
        return family
    listed = shipped_names(kind)
    if kind == SCENARIOS:
        listed += [f"{FAMILIES}/{name}" for name in shipped_names(FAMILIES)]
    names = ", ".join(listed) or "(none)"
    raise FileNotFoundError(f"{what} not found: {str(name_or_path)!r} is neither a file nor a shipped {what} "
                            f"name; shipped names: {names}")
