"""Device, link, network and grid figures with the sources they come from.

Power figures are measured values from the sources cited beside them. ``sleep_w`` (draw of a duty-cycled
node between rounds), ``train_gflop_s`` (sustained training throughput) and the links' sustained rates
are stated assumptions of this project, chosen to be of the right order; change them in one place here.
What a round trains and sends (the workload: compute per sample, bytes per message) is in
``envs/workloads.py``; docs/world_model.md lists every figure with its source.
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
    train_gflop_s: float  # sustained training throughput, GFLOP/s (assumption)
    source: str


@dataclass(frozen=True)
class LinkProfile:
    """A radio's power while it moves data, after Huang et al.'s model P = alpha_u·t_u + alpha_d·t_d + beta
    (t in Mbit/s, P in mW; MobiSys 2012, Table 3): one Mbit sent at rate t costs alpha + beta / t mJ."""

    alpha_up_mw_per_mbit_s: float
    alpha_down_mw_per_mbit_s: float
    beta_mw: float
    uplink_mbit_s: float  # sustained uplink rate
    downlink_mbit_s: float  # sustained downlink rate
    tail_s: float  # radio stays in a high-power state after each burst
    tail_w: float
    source: str

    @property
    def uplink_joule_per_bit(self) -> float:
        return (self.alpha_up_mw_per_mbit_s + self.beta_mw / self.uplink_mbit_s) * 1e-9

    @property
    def downlink_joule_per_bit(self) -> float:
        return (self.alpha_down_mw_per_mbit_s + self.beta_mw / self.downlink_mbit_s) * 1e-9


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "rpi4": DeviceProfile(
        idle_w=2.7, busy_w=6.4, sleep_w=0.1, train_gflop_s=1.8,
        source="Raspberry Pi 4 B idle 2.7 W / stress 6.4 W (RasPi.TV power measurements, 2019)",
    ),
    "jetson_nano": DeviceProfile(
        idle_w=2.0, busy_w=10.0, sleep_w=0.2, train_gflop_s=14.4,
        source="Jetson Nano 10 W nvpmodel mode (NVIDIA Jetson Nano developer kit user guide)",
    ),
    "jetson_orin_nano": DeviceProfile(
        idle_w=4.0, busy_w=15.0, sleep_w=0.3, train_gflop_s=72.0,
        source="Jetson Orin Nano 15 W power mode of 7/15/25 W (NVIDIA Jetson Orin Nano datasheet)",
    ),
    "smartphone": DeviceProfile(
        idle_w=0.5, busy_w=3.5, sleep_w=0.05, train_gflop_s=7.2,
        source="on-device training draws 2-5 W (AutoFL, Kim & Wu, MICRO 2021); 3.5 W taken",
    ),
}

LINK_PROFILES: dict[str, LinkProfile] = {
    "wifi": LinkProfile(
        alpha_up_mw_per_mbit_s=283.17, alpha_down_mw_per_mbit_s=137.01, beta_mw=132.86,
        uplink_mbit_s=20.0, downlink_mbit_s=20.0, tail_s=0.0, tail_w=0.0,
        source="Wi-Fi power model (Huang et al., MobiSys 2012, Table 3); 20 Mbit/s each way assumed: "
               "0.29 uJ/bit up, 0.14 uJ/bit down",
    ),
    "lte": LinkProfile(
        alpha_up_mw_per_mbit_s=438.39, alpha_down_mw_per_mbit_s=51.97, beta_mw=1288.04,
        uplink_mbit_s=6.0, downlink_mbit_s=13.0, tail_s=11.6, tail_w=1.06,
        source="LTE power model, median rates 6 Mbit/s up and 13 Mbit/s down, 11.6 s tail at 1.06 W (Huang et "
               "al., MobiSys 2012): 0.65 uJ/bit up, 0.15 uJ/bit down",
    ),
}

# The network beyond the access link, under two accountings (docs/world_model.md, Network energy).
# attributional: the average energy intensity of the internet's fixed networks, 0.06 kWh/GB in 2015,
# halving about every two years (Aslan, Mayers, Koomey & France, J. Industrial Ecology 2018): the
# network's whole energy shared out per byte.
BACKBONE_KWH_PER_GB_2015 = 0.06
BACKBONE_HALVING_YEARS = 2.0
# marginal: the power model, in which network equipment draws a near-constant baseload per line and each
# extra Mbit/s of traffic adds 0.03 W (Malmodin, EGG 2020, as used by Mytton, Lundén & Malmodin,
# J. Industrial Ecology 2024; Koomey & Masanet, Joule 2021, on why kWh/GB averages overstate the
# energy an extra byte causes). 0.03 W per Mbit/s is 0.03 uJ per bit, 6.7e-5 kWh per GB. The baseload
# runs whether or not a node sends, so no decision of the scheduler changes it and none is charged.
MARGINAL_NETWORK_W_PER_MBIT_S = 0.03
NETWORK_ACCOUNTINGS: tuple[str, ...] = ("marginal", "attributional")


def backbone_kwh_per_gb(year: int) -> float:
    """Attributional kWh per GB carried over the internet in ``year`` (Aslan et al. 2018)."""
    return BACKBONE_KWH_PER_GB_2015 * 0.5 ** ((year - 2015) / BACKBONE_HALVING_YEARS)


def marginal_network_kwh_per_gb() -> float:
    """Marginal kWh one more GB adds in the network's power model (Malmodin 2020; Mytton et al. 2024)."""
    joule_per_bit = MARGINAL_NETWORK_W_PER_MBIT_S / 1e6
    return joule_per_bit * 8e9 / 3.6e6


@functools.cache
def country_energy_mix() -> dict:
    """Per-country annual carbon intensity (gCO2e/kWh) and generation mix shipped with codecarbon
    (Ember / Our World in Data figures)."""
    spec = importlib.util.find_spec("codecarbon")  # locate the data without importing codecarbon itself
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("codecarbon is required for the grid carbon data: pip install codecarbon")
    path = Path(spec.submodule_search_locations[0]) / "data" / "private_infra" / "global_energy_mix.json"
    return json.loads(path.read_text())
