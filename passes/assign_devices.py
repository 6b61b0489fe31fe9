"""assign_devices: choose each layer's encoding (devices per weight) and its conductance mapping.

Options: ``encoding`` is one encoding for every layer ("2-PCM"), or per layer
with an optional default ("4-PCM,fc0=2-PCM"; a mapping in the API); layers
not named take the hardware's default encoding. ``scale`` is "tile" (one
conductance scale per slice) or "column" (one per output column);
``clip_sigma`` clips weights beyond that many standard deviations before
scaling. It runs before split_matrices because an encoding sets the weight
grid of a tile (2-PCM stores 1024 x 512 weights, 4-PCM 512 x 512); the target
conductances follow from these choices (compiler/conductance.py) and are
written to weights.npz.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from compiler.errors import AnacError
from compiler.program import Program

SCALES = ("tile", "column")


@dataclass(frozen=True)
class AssignDevices:
    """Choose 2-PCM or 4-PCM (or the chip's encodings) per layer and how weights map to conductances."""

    name: ClassVar[str] = "assign_devices"
    requires: ClassVar[tuple[str, ...]] = ("partition",)
    produces: ClassVar[tuple[str, ...]] = ("encodings",)
    encoding: str | Mapping[str, str] | None = None
    scale: str = "tile"
    clip_sigma: float | None = None

    def run(self, prog: Program) -> None:
        hw = prog.hardware
        if self.scale not in SCALES:
            raise AnacError(f"unknown conductance scale '{self.scale}'; choose one of {', '.join(SCALES)}")
        if self.clip_sigma is not None and not self.clip_sigma > 0:
            raise AnacError(f"clip_sigma must be positive, got {self.clip_sigma}")
        default, per_layer = parse_encodings(self.encoding)
        default = default or hw.default_encoding
        for enc in {default, *per_layer.values()}:
            hw.encoding(enc)  # raises with the known names
        mvms = prog.mvms or {}
        unknown = sorted(set(per_layer) - set(mvms))
        if unknown:
            raise AnacError(f"--encoding names layer(s) {', '.join(unknown)} that are not crossbar layers; "
                            f"the crossbar layers are: {', '.join(mvms) or '(none)'}")
        for mvm in mvms.values():
            for mid in mvm.matrices:
                m = prog.matrices[mid]  # type: ignore[index]
                m.encoding = per_layer.get(mvm.node, default)
                m.per_column = self.scale == "column"
                m.clip_sigma = self.clip_sigma


def parse_encodings(spec: str | Mapping[str, str] | None) -> tuple[str | None, dict[str, str]]:
    """"4-PCM,fc0=2-PCM" -> ("4-PCM", {"fc0": "2-PCM"}); a mapping may use key "*" for the default."""
    if spec is None:
        return None, {}
    if isinstance(spec, Mapping):
        items = dict(spec)
        return items.pop("*", None), items
    default, per_layer = None, {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        layer, sep, enc = part.rpartition("=")
        if not sep:
            if default is not None:
                raise AnacError(f"--encoding gives two defaults ('{default}' and '{part}'); name layers as LAYER=ENC")
            default = part
        elif not layer:
            raise AnacError(f"--encoding item '{part}' has no layer name before '='")
        else:
            per_layer[layer.strip()] = enc.strip()
    return default, per_layer
