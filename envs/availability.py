"""Device availability: phones leave the fleet and edge boards go offline, as a two-state Markov chain.

Each node is *online* or *offline* in every round. A node of device class c leaves after an exponentially
distributed online spell of mean ``online_h`` and comes back after an offline spell of mean ``offline_h``, so
per round of length Δ (hours)

    P(online -> offline) = 1 - exp(-Δ / online_h),     P(offline -> online) = 1 - exp(-Δ / offline_h),

and a node starts online with the chain's stationary probability online_h / (online_h + offline_h). This is
the on/off (alternating renewal) model of node churn in peer-to-peer and edge measurement studies (Stutzbach &
Rejaie, "Understanding churn in peer-to-peer networks", IMC 2006). The spell lengths of :data:`CLASS_SPELLS`
are assumptions of this project of the right order, not measurements: phones are eligible for on-device
training only while idle, charging and on an unmetered network, a few hours at a time, mostly at night
(Bonawitz et al., "Towards federated learning at scale: system design", MLSys 2019, report a several-fold
day/night swing in eligible devices); mains or solar edge boards run for days between outages.

The whole episode's availability is drawn when the scenario is built, from the counter-based streams of
``envs/dynamics/streams.py`` (stream ``AVAILABILITY``): node i of environment b sees the same chain whether it is
built alone or in a batch, and the per-node reference reads the same (N, T) table as the batched step. The
chain's recursion runs over rounds at build time, vectorised over nodes; nothing of it runs in the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from greengossip.envs.dynamics import streams


@dataclass(frozen=True)
class AvailabilitySpells:
    online_h: float  # mean online spell, hours
    offline_h: float  # mean offline spell, hours

    @property
    def online_share(self) -> float:
        return self.online_h / (self.online_h + self.offline_h)


# assumptions of this project (see the module docstring); a device class not listed is always online
CLASS_SPELLS: dict[str, AvailabilitySpells] = {
    "smartphone": AvailabilitySpells(online_h=3.0, offline_h=3.0),
    "rpi4": AvailabilitySpells(online_h=168.0, offline_h=1.0),
    "jetson_nano": AvailabilitySpells(online_h=168.0, offline_h=1.0),
    "jetson_orin_nano": AvailabilitySpells(online_h=168.0, offline_h=1.0),
}
ALWAYS_ONLINE = AvailabilitySpells(online_h=float("inf"), offline_h=1.0)


def spells_of(device_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) mean online and offline spells (hours) of each node's device class."""
    spells = [CLASS_SPELLS.get(name, ALWAYS_ONLINE) for name in device_names]
    return np.array([s.online_h for s in spells]), np.array([s.offline_h for s in spells])


def availability_trace(device_names: tuple[str, ...], n_rounds: int, round_minutes: float, stream_key: int,
                       model: str) -> np.ndarray:
    """(N, T) bool, whether each node is online in each round of the episode."""
    n = len(device_names)
    if model == "always":
        return np.ones((n, n_rounds), dtype=bool)
    online_h, offline_h = spells_of(device_names)
    round_h = round_minutes / 60.0
    leave = -np.expm1(-round_h / online_h)  # 0 where online_h is infinite
    back = -np.expm1(-round_h / offline_h)
    stationary = np.where(np.isinf(online_h), 1.0, online_h / (online_h + offline_h))
    key = torch.full((n_rounds,), stream_key, dtype=torch.long)
    draws = streams.uniform(key, torch.arange(n_rounds), streams.AVAILABILITY, (n,)).double().numpy()  # (T, N)
    online = np.empty((n, n_rounds), dtype=bool)
    online[:, 0] = draws[0] < stationary
    for t in range(1, n_rounds):  # the chain's recursion at scenario build, vectorised over nodes
        online[:, t] = np.where(online[:, t - 1], draws[t] >= leave, draws[t] < back)
    return online
