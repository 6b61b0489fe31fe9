"""The hardware description: every number the compiler uses about the chip.

A ``HardwareSpec`` is a preset plus overrides read from a JSON or TOML file.
No pass holds a hardware constant; they all read this spec. The default
preset is IBM's 14-nm PCM chip (Ambrogio et al., Nature 2023); a Mythic
M1076-like flash preset shows the same fields describing another chip.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from anac.core.errors import HardwareSpecError

PCM_SOURCES = {
    "family": "aihwkit PCMLikeNoiseModel; Nandakumar et al. 2019, Joshi et al. 2020",
}

FLASH_SOURCES = {
    "family": "NOR flash analog compute (Mythic M1076 class); no per-cell statistics published",
    "flash_first_sigma": "proxy",
    "flash_verify_shrink": "proxy",
    "flash_verify_iterations": "proxy",
    "flash_verify_floor": "proxy (about 8-bit verify resolution)",
    "flash_read_sigma": "proxy",
    "flash_temp_coeff_per_k": "proxy",
    "flash_retention_tau_s": "proxy (10-year retention specs of NOR flash)",
    "flash_retention_spread": "proxy",
}

ECRAM_SOURCES = {
    "family": "Onen et al., Science 377, 539 (2022), nanosecond protonic programmable resistors",
    "ecram_states": "proxy",
    "ecram_asymmetry": "proxy",
    "ecram_c2c_sigma": "proxy",
    "ecram_relax_fraction": "proxy",
    "ecram_relax_tau_s": "proxy (minutes)",
    "ecram_read_sigma": "proxy",
}

RERAM_SOURCES = {
    "family": "Wan et al., Nature 608, 504 (2022), NeuRRAM",
    "reram_prog_poly": "cubic fit to Wan et al. 2022 Extended Data Fig. 3 at t = 1 s (as in Sandia CrossSim RRAMWan)",
    "g_max_us": "Wan et al. 2022: conductances up to about 40 uS",
    "reram_relax_sigma_us": "proxy",
    "reram_read_sigma": "proxy",
}


FAMILY_SOURCES = {"pcm": PCM_SOURCES, "flash": FLASH_SOURCES, "ecram": ECRAM_SOURCES, "reram": RERAM_SOURCES}


@dataclass(frozen=True)
class Encoding:
    """How one weight is stored: devices per weight, and weights per unit cell.

    A unit cell holds ``devices_per_cell`` devices; an encoding with fewer
    devices per weight packs ``weights_per_cell`` weights into one cell, on
    different input rows (IBM 2-PCM: two differential pairs per 4-PCM cell).
    """

    name: str
    devices_per_weight: int
    weights_per_cell: int = 1
    significance_factor: float = 1.0  # F: MSB pair weighted F x the LSB pair
    bits_per_device: int | None = None  # None: analog conductance, not discrete levels


DEVICE_FAMILIES = ("pcm", "flash", "ecram", "reram")  # models in anac.backends.devices.FAMILIES


@dataclass(frozen=True)
class DeviceModel:
    """Statistical device model of one family (``family``); units uS, s and K.

    Only the fields of the chosen family are used. ``sources`` maps a field name to
    where its value comes from; a value marked "proxy" is a placeholder of the
    right order of magnitude, not a measurement of that device.
    """

    family: str = "pcm"  # one of DEVICE_FAMILIES
    g_max_us: float = 25.0
    # PCM (aihwkit PCMLikeNoiseModel)
    prog_noise_poly: tuple[float, ...] = (0.26348, 1.9650, -1.1731)
    drift_t0_s: float = 20.0
    drift_mu: tuple[float, float, float, float] = (-0.0155, 0.0244, 0.049, 0.1)  # a, b, lo, hi
    drift_sigma: tuple[float, float, float, float] = (-0.0125, -0.0059, 0.008, 0.045)
    read_noise_q: tuple[float, float, float, float] = (0.0088, 0.65, 1e-3, 0.2)  # c, exp, floor, cap
    t_read_s: float = 250e-9
    # Flash (NOR charge-trap / floating-gate cells, program-and-verify)
    flash_first_sigma: float = 0.05  # error of the first program pulse, fraction of g_max
    flash_verify_shrink: float = 0.5  # each verify iteration multiplies the error by this
    flash_verify_iterations: int = 6
    flash_verify_floor: float = 0.002  # verify resolution: error floor, fraction of g_max
    flash_read_sigma: float = 0.005  # relative read noise
    flash_temp_coeff_per_k: float = -0.002  # relative conductance change per kelvin from the program temperature
    flash_program_temp_k: float = 300.0
    temperature_k: float = 300.0  # operating temperature
    flash_retention_tau_s: float = 3.15e9  # charge loss g(t) = g exp(-t / tau) (about 100 years)
    flash_retention_spread: float = 0.3  # log-normal spread of tau across devices
    flash_refresh_s: float = 0.0  # period of re-programming (0: never refreshed)
    # ECRAM (protonic programmable resistor, open-loop pulses)
    ecram_states: int = 256  # distinct states across [0, g_max]
    ecram_asymmetry: float = 0.1  # down step = (1 - a) x up step (the controller assumes symmetric steps)
    ecram_c2c_sigma: float = 0.05  # cycle-to-cycle noise of one step, relative to the step
    ecram_scheme: str = "up"  # "up": reset to 0, potentiate; "updown": reset to g_max/2, pulse either way
    ecram_relax_fraction: float = 0.05  # fraction of the programmed change that relaxes back
    ecram_relax_tau_s: float = 120.0
    ecram_read_sigma: float = 0.002  # relative read noise
    # ReRAM (NeuRRAM, Wan et al. 2022)
    reram_prog_poly: tuple[float, ...] = (1.053, 0.2374, -1.167e-2, 1.536e-4)  # sigma_G(G) in uS, G in uS
    reram_relax_sigma_us: float = 0.4  # extra spread per decade of time after t0 (uS)
    reram_relax_t0_s: float = 1.0
    reram_read_sigma: float = 0.01  # relative read noise
    sources: dict[str, str] = field(default_factory=lambda: dict(PCM_SOURCES))

    @property
    def kind(self) -> str:  # the field's name before device families
        return self.family


@dataclass(frozen=True)
class Links:
    """How chips exchange data: topology, bandwidth and latency of each link."""

    topology: str = "host"  # "host" (all-to-all through the host), "ring" or "mesh"
    bandwidth_bytes_per_ns: float = 1.0  # per link (inferred; the paper does not publish it)
    latency_ns: float = 1000.0  # per transfer on a link


@dataclass(frozen=True)
class Energy:
    """Energy per operation (pJ); the paper gives 20 TOPS/W peak per tile and 12.4 TOPS/W sustained.

    One multiply-accumulate is two operations, so 20 TOPS/W is 0.1 pJ per MAC. The I/O,
    link and host figures are inferred (the paper does not break them down): set them
    from measurements of the system at hand.
    """

    mac_pj: float = 0.1  # analog MAC in the crossbar, periphery included (20 TOPS/W peak per tile)
    io_pj_per_byte: float = 2.0  # ILP/OLP conversion of an 8-bit word in or out of a tile (inferred)
    link_pj_per_byte: float = 20.0  # a byte over a chip link or to the host (inferred)
    host_pj_per_element: float = 50.0  # a host operation per output element (inferred)
    paper_tops_per_w_sustained: float = 12.4
    paper_tops_per_w_peak_tile: float = 20.0


@dataclass(frozen=True)
class HardwareSpec:
    """One chip family: tiles, crossbar size, encodings, I/O, device model, links."""

    name: str
    tiles_per_chip: int
    tile_rows: int  # unit-cell rows per crossbar (inputs)
    tile_cols: int  # unit-cell columns per crossbar (outputs)
    devices_per_cell: int
    encodings: tuple[Encoding, ...]
    default_encoding: str
    device: DeviceModel = field(default_factory=DeviceModel)
    links: Links = field(default_factory=Links)
    energy: Energy = field(default_factory=Energy)
    input_bits: int = 8
    input_encoding: str = "pwm"  # pulse-width modulated durations
    # How signed inputs drive rows: "polarity" = one pass, the sign picks the pulse polarity and the
    # magnitude is an unsigned input_bits word; "two-pass" = positive and negative parts in two
    # passes of unsigned words, their outputs subtracted digitally.
    input_sign: str = "polarity"
    output_bits: int = 8  # signed: 2^(bits-1) - 1 levels each side of zero, saturating at the range
    output_encoding: str = "ramp"  # charge -> duration by ramp comparison
    analog_activations: tuple[str, ...] = ("Relu", "HardSigmoid", "HardTanh")
    partial_sums: str = "host"  # where partial sums across tiles are added
    io_pads_per_chip: int = 6
    tile_grid: tuple[int, int] = (6, 6)  # tiles sit on a 2-D mesh of this many rows x columns, row-major
    # One 512-wide MVM integration: on the order of 100 ns (the paper's RNN-T frame: 5 steps of 300 ns).
    mvm_time_ns: float = 100.0
    host_stage_ns: float = 1000.0  # fixed cost of a host round of work (inferred)
    host_ns_per_element: float = 0.5  # host time per output element of a host stage or digital sum (inferred)
    max_chips: int | None = None  # None: as many chips as the model needs

    def encoding(self, name: str) -> Encoding:
        for e in self.encodings:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in self.encodings)
        raise HardwareSpecError(f"unknown encoding '{name}' for hardware '{self.name}'; known: {known}")

    def weight_grid(self, encoding: str) -> tuple[int, int]:
        """Weights per tile as (rows, columns) under an encoding."""
        e = self.encoding(encoding)
        return self.tile_rows * e.weights_per_cell, self.tile_cols

    @property
    def devices_per_tile(self) -> int:
        return self.tile_rows * self.tile_cols * self.devices_per_cell

    def validate(self) -> HardwareSpec:
        """Check every number is finite and in its range, and the numbers are consistent; return self."""
        for f in ("tiles_per_chip", "tile_rows", "tile_cols", "devices_per_cell", "input_bits", "output_bits"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise HardwareSpecError(f"hardware '{self.name}': {f} must be a positive integer, got {v!r}")
        _check_ranges(self)
        if self.max_chips is not None and (not isinstance(self.max_chips, int) or self.max_chips <= 0):
            raise HardwareSpecError(
                f"hardware '{self.name}': max_chips must be a positive integer, got {self.max_chips!r}")
        if not self.encodings:
            raise HardwareSpecError(f"hardware '{self.name}' declares no encodings")
        for e in self.encodings:
            if e.devices_per_weight <= 0 or e.weights_per_cell <= 0:
                raise HardwareSpecError(
                    f"encoding '{e.name}': devices_per_weight and weights_per_cell must be positive")
            if e.devices_per_weight * e.weights_per_cell > self.devices_per_cell:
                raise HardwareSpecError(
                    f"encoding '{e.name}': {e.weights_per_cell} weights x {e.devices_per_weight} devices "
                    f"exceed the {self.devices_per_cell} devices of a unit cell")
        self.encoding(self.default_encoding)
        if self.input_sign not in ("polarity", "two-pass"):
            raise HardwareSpecError(f"input_sign must be 'polarity' or 'two-pass', got {self.input_sign!r}")
        if self.links.topology not in ("host", "ring", "mesh"):
            raise HardwareSpecError(f"links.topology must be 'host', 'ring' or 'mesh', got {self.links.topology!r}")
        if self.tile_grid[0] * self.tile_grid[1] < self.tiles_per_chip:
            raise HardwareSpecError(f"tile_grid {self.tile_grid[0]} x {self.tile_grid[1]} has fewer positions "
                                    f"than the {self.tiles_per_chip} tiles per chip")
        if self.partial_sums not in ("host", "chip"):
            raise HardwareSpecError(f"partial_sums must be 'host' or 'chip', got {self.partial_sums!r}")
        _validate_device(self.device)
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HardwareSpec:
        return _build(data, base=None)


_INF = float("inf")
# field: (low, low included, high, integer); every value must also be a real number (and finite).
_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "tiles_per_chip": (1, True, 2**20, True), "tile_rows": (1, True, 2**20, True),
    "tile_cols": (1, True, 2**20, True), "devices_per_cell": (1, True, 64, True),
    "input_bits": (1, True, 32, True), "output_bits": (2, True, 32, True),
    "io_pads_per_chip": (1, True, 2**20, True), "tile_grid": (1, True, 2**20, True),
    "max_chips": (1, True, 2**20, True),
    "mvm_time_ns": (0, False, _INF, False), "host_stage_ns": (0, True, _INF, False),
    "host_ns_per_element": (0, True, _INF, False),
    "device.g_max_us": (0, False, _INF, False), "device.prog_noise_poly": (-_INF, False, _INF, False),
    "device.drift_t0_s": (0, False, _INF, False), "device.drift_mu": (-_INF, False, _INF, False),
    "device.drift_sigma": (-_INF, False, _INF, False), "device.t_read_s": (0, False, _INF, False),
    "device.read_noise_q": (-_INF, False, _INF, False),
    "links.bandwidth_bytes_per_ns": (0, False, _INF, False), "links.latency_ns": (0, True, _INF, False),
    **{f"energy.{f.name}": (0, True, _INF, False) for f in fields(Energy)},
    "encodings.devices_per_weight": (1, True, 64, True), "encodings.weights_per_cell": (1, True, 64, True),
    "encodings.significance_factor": (0, False, _INF, False), "encodings.bits_per_device": (1, True, 32, True),
}
_LENGTHS = {"device.drift_mu": 4, "device.drift_sigma": 4, "device.read_noise_q": 4, "tile_grid": 2}


def _range_text(lo: float, lo_in: bool, hi: float, integer: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    low = f"{'>=' if lo_in else '>'} {lo:g}" if lo != -_INF else ""
    high = f"<= {hi:g}" if hi != _INF else ""
    return f"{kind} {' and '.join(x for x in (low, high) if x)}".rstrip()


def _check_value(spec: str, where: str, key: str, v: Any) -> None:
    lo, lo_in, hi, integer = _RANGES[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
        (not integer or isinstance(v, int)) and (v >= lo if lo_in else v > lo) and v <= hi
    if not ok:
        raise HardwareSpecError(f"hardware '{spec}': {where} must be {_range_text(lo, lo_in, hi, integer)}, got {v!r}")


def _check_ranges(hw: HardwareSpec) -> None:
    """Every number of ``hw`` finite and in the range of ``_RANGES``, naming the field and the range."""
    for key in _RANGES:
        head, _, tail = key.partition(".")
        if head == "encodings":
            for e in hw.encodings:
                v = getattr(e, tail, None)
                if v is not None or tail != "bits_per_device":
                    _check_value(hw.name, f"encoding '{e.name}' {tail}", key, v)
            continue
        v = getattr(getattr(hw, head), tail) if tail else getattr(hw, head)
        if v is None and key == "max_chips":
            continue
        if isinstance(v, (tuple, list)):
            if key in _LENGTHS and len(v) != _LENGTHS[key]:
                raise HardwareSpecError(f"hardware '{hw.name}': {key} must hold {_LENGTHS[key]} numbers, "
                                        f"got {len(v)}")
            for i, x in enumerate(v):
                _check_value(hw.name, f"{key}[{i}]", key, x)
        else:
            _check_value(hw.name, key, key, v)
    c, e, floor, cap = hw.device.read_noise_q
    if c < 0 or floor <= 0 or cap < floor:
        raise HardwareSpecError(f"hardware '{hw.name}': device.read_noise_q = (c, exp, floor, cap) needs c >= 0, "
                                f"floor > 0 (read noise divides by it) and cap >= floor, got {hw.device.read_noise_q}")
    for name in ("drift_mu", "drift_sigma"):
        lo, hi = getattr(hw.device, name)[2:]
        if lo > hi:
            raise HardwareSpecError(f"hardware '{hw.name}': device.{name} = (a, b, lo, hi) needs lo <= hi, "
                                    f"got lo {lo} > hi {hi}")


IBM_PCM_14NM = HardwareSpec(
    name="ibm-pcm-14nm",
    tiles_per_chip=34,
    tile_rows=512,
    tile_cols=512,
    devices_per_cell=4,
    encodings=(
        Encoding("4-PCM", devices_per_weight=4, weights_per_cell=1),
        Encoding("2-PCM", devices_per_weight=2, weights_per_cell=2),
    ),
    default_encoding="4-PCM",
    # The paper's time step: an MVM with 8-bit PWM inputs and ramp outputs, 300 ns (Ext. Data Fig. 7d).
    mvm_time_ns=300.0,
)

# Mythic M1076-like: 76 tiles of about 1024 x 1024 flash cells, one cell per
# weight at 8-bit levels, activations in digital units, chips joined over PCIe.
MYTHIC_M1076 = HardwareSpec(
    name="mythic-m1076",
    tiles_per_chip=76,
    tile_rows=1024,
    tile_cols=1024,
    devices_per_cell=1,
    encodings=(Encoding("flash-8b", devices_per_weight=1, bits_per_device=8),),
    default_encoding="flash-8b",
    device=DeviceModel(family="flash", sources=dict(FLASH_SOURCES)),
    links=Links(topology="host", bandwidth_bytes_per_ns=4.0, latency_ns=1000.0),
    input_encoding="dac",
    output_encoding="adc",
    analog_activations=(),
    partial_sums="chip",
    io_pads_per_chip=1,
    tile_grid=(8, 10),
)

# Hypothetical: no protonic ECRAM chip exists. 512 x 512 tiles of differential device pairs,
# the tile count and periphery copied from the PCM preset.
PROTONIC_ECRAM = HardwareSpec(
    name="protonic-ecram",
    tiles_per_chip=34,
    tile_rows=512,
    tile_cols=512,
    devices_per_cell=2,
    encodings=(Encoding("2-ECRAM", devices_per_weight=2),),
    default_encoding="2-ECRAM",
    device=DeviceModel(family="ecram", sources={**ECRAM_SOURCES, "chip": "hypothetical: no such chip exists"}),
)

# NeuRRAM-like: 48 cores of 256 x 256 RRAM, a weight as a differential conductance pair.
NEURRAM = HardwareSpec(
    name="neurram",
    tiles_per_chip=48,
    tile_rows=128,  # 256 device rows: a differential pair of rows per input
    tile_cols=256,
    devices_per_cell=2,
    encodings=(Encoding("2-RRAM", devices_per_weight=2),),
    default_encoding="2-RRAM",
    device=DeviceModel(family="reram", g_max_us=40.0,
                       sources={**RERAM_SOURCES, "chip": "Wan et al. 2022: 48 cores of 256 x 256 RRAM"}),
    tile_grid=(6, 8),
)

PRESETS: dict[str, HardwareSpec] = {p.name: p for p in (IBM_PCM_14NM, MYTHIC_M1076, PROTONIC_ECRAM, NEURRAM)}
DEFAULT_PRESET = IBM_PCM_14NM.name


# field: (low, high, low inclusive); every bound is checked whatever the family
_DEVICE_RANGES: dict[str, tuple[float, float, bool]] = {
    "g_max_us": (0.0, math.inf, False),
    "drift_t0_s": (0.0, math.inf, False),
    "t_read_s": (0.0, math.inf, False),
    "flash_first_sigma": (0.0, math.inf, True),
    "flash_verify_shrink": (0.0, 1.0, True),
    "flash_verify_iterations": (0, math.inf, True),
    "flash_verify_floor": (0.0, math.inf, True),
    "flash_read_sigma": (0.0, math.inf, True),
    "flash_temp_coeff_per_k": (-math.inf, math.inf, True),
    "flash_program_temp_k": (0.0, math.inf, False),
    "temperature_k": (0.0, math.inf, False),
    "flash_retention_tau_s": (0.0, math.inf, False),
    "flash_retention_spread": (0.0, math.inf, True),
    "flash_refresh_s": (0.0, math.inf, True),
    "ecram_states": (2, math.inf, True),
    "ecram_asymmetry": (0.0, 1.0, True),
    "ecram_c2c_sigma": (0.0, math.inf, True),
    "ecram_relax_fraction": (0.0, 1.0, True),
    "ecram_relax_tau_s": (0.0, math.inf, False),
    "ecram_read_sigma": (0.0, math.inf, True),
    "reram_relax_sigma_us": (0.0, math.inf, True),
    "reram_relax_t0_s": (0.0, math.inf, False),
    "reram_read_sigma": (0.0, math.inf, True),
}
_INT_FIELDS = ("flash_verify_iterations", "ecram_states")


def _validate_device(d: DeviceModel) -> None:
    if d.family not in DEVICE_FAMILIES:
        raise HardwareSpecError(f"device.family must be one of {', '.join(DEVICE_FAMILIES)}; got {d.family!r}")
    for name, (lo, hi, lo_incl) in _DEVICE_RANGES.items():
        v = getattr(d, name)
        ok_type = isinstance(v, int) if name in _INT_FIELDS else isinstance(v, (int, float))
        ok = ok_type and not isinstance(v, bool) and (v >= lo if lo_incl else v > lo) and v <= hi
        if not ok:
            bracket = "[" if lo_incl else "("
            kind = "an integer" if name in _INT_FIELDS else "a number"
            raise HardwareSpecError(f"device.{name} must be {kind} in {bracket}{lo}, {hi}], got {v!r}")
    if d.ecram_scheme not in ("up", "updown"):
        raise HardwareSpecError(f"device.ecram_scheme must be 'up' or 'updown', got {d.ecram_scheme!r}")
    if not isinstance(d.sources, dict):
        raise HardwareSpecError(f"device.sources must be a table of field -> source, got {type(d.sources).__name__}")


def load_hardware(path: str | Path | None = None, preset: str | None = None) -> HardwareSpec:
    """A preset, overridden by the keys of a JSON or TOML file when given.

    ``path`` may also name a preset (``--hardware neurram``) when no such file exists.
    """
    data: dict[str, Any] = {}
    if path is not None and preset is None and str(path) in PRESETS and not Path(path).exists():
        path, preset = None, str(path)
    if path is not None:
        data = _read_spec_file(Path(path))
    name = preset or data.pop("preset", None) or DEFAULT_PRESET
    if name not in PRESETS:
        raise HardwareSpecError(f"unknown hardware preset '{name}'; known: {', '.join(PRESETS)}")
    return _build(data, base=PRESETS[name])


def _read_spec_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise HardwareSpecError(f"cannot read hardware file {path}: {e.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise HardwareSpecError("reading TOML needs Python 3.11+ or the tomli package; "
                                            "or give the hardware file as JSON") from None
            data = tomllib.loads(text.decode("utf-8"))
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise HardwareSpecError(f"hardware file {path} is not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise HardwareSpecError(f"hardware file {path} must hold a table/object at the top level")
    return data


def _build(data: dict[str, Any], base: HardwareSpec | None) -> HardwareSpec:
    """Apply ``data`` (nested dicts) over ``base`` (or build from scratch), then validate."""
    data = dict(data)
    known = {f.name for f in fields(HardwareSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise HardwareSpecError(f"unknown hardware field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("encodings", "analog_activations", "tile_grid"):
        if key in data and not isinstance(data[key], (list, tuple)):
            raise HardwareSpecError(f"hardware field '{key}' must be a list, got {type(data[key]).__name__}")
    if "encodings" in data:
        data["encodings"] = tuple(_sub(Encoding, e, None, "encodings") for e in data["encodings"])
    for key, cls in (("device", DeviceModel), ("links", Links), ("energy", Energy)):
        if key in data:
            data[key] = _sub(cls, data[key], getattr(base, key) if base else None, key)
    for key in ("analog_activations", "tile_grid"):
        if key in data:
            data[key] = tuple(data[key])
    for key in ("name", "default_encoding", "input_encoding", "input_sign", "output_encoding", "partial_sums"):
        if key in data and not isinstance(data[key], str):
            raise HardwareSpecError(f"hardware field '{key}' must be a string, got {type(data[key]).__name__}")
    try:
        spec = replace(base, **data) if base is not None else HardwareSpec(**data)
    except TypeError as e:
        raise HardwareSpecError(f"incomplete hardware description: {e}") from None
    return spec.validate()


def _sub(cls: type, value: Any, base: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise HardwareSpecError(f"hardware field '{where}' must be a table/object, got {type(value).__name__}")
    known = {f.name for f in fields(cls)} | ({"kind"} if cls is DeviceModel else set())
    unknown = sorted(set(value) - known)
    if unknown:
        raise HardwareSpecError(
            f"unknown field(s) in '{where}': {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    if cls is DeviceModel and "kind" in value:  # saved before device families: kind is the family
        value.setdefault("family", value.pop("kind"))
        value.pop("kind", None)
    if cls is DeviceModel and base is not None and value.get("family", base.family) != base.family:
        # another family than the preset's: its own sources, not the preset's
        value.setdefault("sources", dict(FAMILY_SOURCES.get(value["family"], {})))
    for k, v in value.items():
        default = getattr(base, k, None) if base is not None else \
            next((f.default for f in fields(cls) if f.name == k), None)
        if isinstance(default, tuple) and not isinstance(v, tuple):
            raise HardwareSpecError(f"hardware field '{where}.{k}' must be a list of {len(default)} numbers, "
                                    f"got {type(v).__name__}")
    try:
        return replace(base, **value) if base is not None else cls(**value)
    except TypeError as e:
        raise HardwareSpecError(f"incomplete '{where}' in hardware description: {e}") from None
