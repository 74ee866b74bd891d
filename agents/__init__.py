"""Schedulers: hand-written heuristics and trained models behind one interface.

Every scheduler has SB3's ``predict(observation, state=None, episode_start=None, deterministic=True)
-> (action, state)`` and an ``observation_kind`` (``"dict"`` or ``"flat"``). :func:`make_scheduler`
builds one from a heuristic name (see :data:`HEURISTICS`; ``"name:key=value,..."`` sets parameters,
e.g. ``"random_k:fraction=0.25"``) or from the path of a saved SB3 model.
"""

from __future__ import annotations

# Import from the submodules (not ``from agents import ...``) inside the project: the editable install
# may expose ``agents`` as a namespace package when run from outside the repository.
from greengossip.agents.base import HeuristicScheduler, Scheduler
from greengossip.agents.heuristics import HEURISTICS
from greengossip.agents.learned import LearnedScheduler, is_model_spec, load_scheduler, make_scheduler, scheduler_label

__all__ = [
    "HEURISTICS", "HeuristicScheduler", "LearnedScheduler", "Scheduler", "is_model_spec", "load_scheduler",
    "make_scheduler", "scheduler_label",
]
