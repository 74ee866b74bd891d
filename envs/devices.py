"""Device, link and grid figures with the sources they come from.

Power figures are measured values from the sources cited beside them. ``sleep_w`` (draw of a duty-cycled
node between rounds) and ``samples_per_s`` (training throughput on the *emulated* on-device workload,
a MobileNetV2-class CNN at 224 px; the digits model is the stand-in learner whose accuracy we compute)
are stated assumptions of this project, chosen to be of the right order; change them in one place here.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DeviceProfile:
    idle_w: float  # awake, not computing (radio on), W
    busy_w: float  # training flat out, W
    sleep_w: float  # duty-cycled low-power state between rounds, W (assumption)
    samples_per_s: float  # emulated-workload training throughput (assumption)
    source: str


@dataclass(frozen=True)
class LinkProfile:
    uplink_joule_per_bit: float
    uplink_mbit_s: float  # assumption: typical sustained uplink rate
    tail_s: float  # radio stays in a high-power state after each burst
    tail_w: float
    source: str


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "rpi4": DeviceProfile(
        idle_w=2.7, busy_w=6.4, sleep_w=0.1, samples_per_s=1.0,
        source="Raspberry Pi 4 B idle 2.7 W / stress 6.4 W (RasPi.TV power measurements, 2019)",
    ),
    "jetson_nano": DeviceProfile(
        idle_w=2.0, busy_w=10.0, sleep_w=0.2, samples_per_s=8.0,
        source="Jetson Nano 10 W nvpmodel mode (NVIDIA Jetson Nano developer kit user guide)",
    ),
    "jetson_orin_nano": DeviceProfile(
        idle_w=4.0, busy_w=15.0, sleep_w=0.3, samples_per_s=40.0,
        source="Jetson Orin Nano 15 W power mode of 7/15/25 W (NVIDIA Jetson Orin Nano datasheet)",
    ),
    "smartphone": DeviceProfile(
        idle_w=0.5, busy_w=3.5, sleep_w=0.05, samples_per_s=4.0,
        source="on-device training draws 2-5 W (AutoFL, Kim & Wu, MICRO 2021); 3.5 W taken",
    ),
}

LINK_PROFILES: dict[str, LinkProfile] = {
    "wifi": LinkProfile(
        uplink_joule_per_bit=0.30e-6, uplink_mbit_s=20.0, tail_s=0.0, tail_w=0.0,
        source="Wi-Fi uplink ~0.30 uJ/bit (Huang et al., MobiSys 2012)",
    ),
    "lte": LinkProfile(
        uplink_joule_per_bit=0.65e-6, uplink_mbit_s=5.0, tail_s=11.6, tail_w=1.06,
        source="LTE uplink ~0.65 uJ/bit and an 11.6 s tail at ~1.06 W (Huang et al., MobiSys 2012)",
    ),
}

# Backbone (core network) energy intensity: 0.06 kWh/GB in 2015, halving about every two years
# (Aslan, Mayers, Koomey & France, J. Industrial Ecology 2018).
BACKBONE_KWH_PER_GB_2015 = 0.06
BACKBONE_HALVING_YEARS = 2.0


def backbone_kwh_per_gb(year: int) -> float:
    return BACKBONE_KWH_PER_GB_2015 * 0.5 ** ((year - 2015) / BACKBONE_HALVING_YEARS)


# Broadcast levels (the "what to send" part of an action). Bytes are per parameter of the emulated
# model relative to fp32: 8-bit quantisation keeps 1 byte/param; top-k keeps k values plus int32 indices.
COMPRESSION_LEVELS: tuple[str, ...] = ("full", "q8", "top10", "top1")
COMPRESSION_BYTE_RATIO: dict[str, float] = {"full": 1.0, "q8": 0.25, "top10": 0.10 * 2, "top1": 0.01 * 2}
TOPK_FRACTION: dict[str, float] = {"top10": 0.10, "top1": 0.01}


@functools.cache
def country_energy_mix() -> dict:
    """Per-country annual carbon intensity (gCO2e/kWh) and generation mix shipped with codecarbon
    (Ember / Our World in Data figures)."""
    spec = importlib.util.find_spec("codecarbon")  # locate the data without importing codecarbon itself
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("codecarbon is required for the grid carbon data: pip install codecarbon")
    path = Path(spec.submodule_search_locations[0]) / "data" / "private_infra" / "global_energy_mix.json"
    return json.loads(path.read_text())
