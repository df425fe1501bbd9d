"""Device profiles (``device_profiles/<target>-*.toml``): what a target device can do, validated on load.

```toml
[device]
name = "snapdragon-8-gen-3"
target = "snapdragon"              # a registered target
precisions = ["fp32", "8da4w"]     # what the device's runtime executes (schema.Precision)
memory_gb = 12
bandwidth_gbps = 76.8              # peak DRAM bandwidth (cite the source in a comment)
int8_gops = 1000                   # peak int8 throughput of the cores used
max_context = 2048                 # the longest KV cache to build for
max_batch = 1                      # the largest batch to build for
bandwidth_efficiency = 0.49        # fraction of peak a decoder reaches (calibrated on published figures)
compute_efficiency = 0.5
threads = 4                        # CPU targets: runtime threads
cpu_cores = { prime = 1, performance = 5, efficiency = 2 }
calibrated_bytes_per_token = 0.75e9  # the decoder the efficiencies were fitted on (its weight bytes per token)
token_overhead_ms = 0.5            # fixed cost of one decoder pass that no weight read explains (dispatch, sync)
image_overhead_ms = 10             # fixed cost of one image besides the encoder's ops (preprocessing, dispatch)
```
A target may add its own typed table (``[<target>]``, its ``profile_options``). Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.schema import Precision, Where, bounded, parse_table, read_named_toml, shipped_dir
from mobilevlm_export.targets import Target, find_target, registry

PROFILES_DIR = shipped_dir("device_profiles")  # the repository's device_profiles/, shipped in the wheel as package data


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    target: str
    precisions: tuple[Precision, ...]
    memory_gb: float = bounded(min=1e-3)
    bandwidth_gbps: float = bounded(min=1e-3)
    int8_gops: float = bounded(min=1e-3)
    max_context: int = bounded(min=2)
    bandwidth_efficiency: float = bounded(min=1e-3, max=1)
    compute_efficiency: float = bounded(min=1e-3, max=1)
    max_batch: int = bounded(1, min=1)
    threads: int | None = bounded(None, min=1)
    cpu_cores: dict = field(default_factory=dict)
    # the fixed costs a roofline leaves out (``predict``): per decoder pass (a decoded token, a prefill), per image;
    # and the decoder size (weight bytes per token) the efficiencies were calibrated on
    token_overhead_ms: float = bounded(0.0, min=0)
    image_overhead_ms: float = bounded(0.0, min=0)
    calibrated_bytes_per_token: float | None = bounded(None, min=1)
    options: object = field(default=None, init=False, compare=False)
    source: str = field(default="", init=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["precisions"] = [p.value for p in self.precisions]
        if self.options is not None:
            d["options"] = asdict(self.options)
        return d

    @classmethod
    def from_dict(cls, data: dict, source: str = "manifest.json (profile)") -> DeviceProfile:
        """The profile ``to_dict`` wrote (a build's manifest holds one), validated as a profile file is: a build
        made with ``--profile ./custom.toml`` has no profile of that name to load again."""
        from mobilevlm_export.schema import Where

        if not isinstance(data, dict):
            raise Where(source).bad("profile", "must be an object")
        device = {k: v for k, v in data.items() if k not in ("options", "source") and v is not None}
        options = data.get("options")
        return parse_profile({"device": device, **({str(data.get("target")): options} if options else {})}, source)

    def predict(self, decoder_bytes_per_token: float, decoder_ops_per_token: float, vision_ops: float,
                prefill_positions: int | None = None) -> dict:
        """Roofline predictions with fixed overheads: decode is bandwidth-bound (weights read once per token),
        prefill and the vision encoder compute-bound, each scaled by the profile's calibrated efficiency; plus the
        profile's fixed costs, ``token_overhead_ms`` per decoder pass and ``image_overhead_ms`` per image.

        The efficiencies were fitted on published figures of a model of ``calibrated_bytes_per_token``, so they
        already hold that model's per-pass overhead: a pass of a model that reads a fraction x <= 1 of those bytes
        takes its roofline time plus ``token_overhead_ms * (1 - x)`` (at the calibrated size the fit is unchanged,
        for a tiny model the overhead stays). The prefill pays it once per pass of ``prefill_positions`` positions
        (default ``DEFAULT_PREFILL_POSITIONS``). ``validity``: where the decoder is under ``VALIDITY_RANGE[0]`` or
        over ``VALIDITY_RANGE[1]`` times the calibrated size, the figures are outside the model's validity range
        (None inside it). Figures to 4 significant digits (a tiny model's vision time is not 0.0)."""
        bw = self.bandwidth_gbps * 1e9 * self.bandwidth_efficiency
        ops = self.int8_gops * 1e9 * self.compute_efficiency
        cal = self.calibrated_bytes_per_token
        x = min(decoder_bytes_per_token / cal, 1.0) if cal else 0.0
        overhead_s = self.token_overhead_ms * 1e-3 * (1.0 - x)
        decode_s = decoder_bytes_per_token / bw + overhead_s
        positions = prefill_positions or DEFAULT_PREFILL_POSITIONS
        prefill_s = positions * decoder_ops_per_token / ops + overhead_s
        vision_ms = vision_ops / ops * 1e3 + self.image_overhead_ms if vision_ops else 0.0
        return {"device": self.name, "decode_tokens_per_s": _sig(1 / decode_s),
                "prefill_tokens_per_s": _sig(positions / prefill_s), "vision_ms": _sig(vision_ms),
                "assumptions": f"{self.bandwidth_gbps} GB/s x {self.bandwidth_efficiency}, "
                               f"{self.int8_gops} GOPS x {self.compute_efficiency}",
                "overheads": {"token_ms": self.token_overhead_ms, "image_ms": self.image_overhead_ms,
                              "prefill_positions": positions},
                "validity": self.validity(decoder_bytes_per_token)}

    def validity(self, decoder_bytes_per_token: float) -> str | None:
        """None where a decoder of this size is within ``VALIDITY_RANGE`` of the calibrated one (or none is
        recorded); else why the predictions are not to be taken as figures."""
        cal = self.calibrated_bytes_per_token
        if not cal:
            return None
        ratio = decoder_bytes_per_token / cal
        size = f"the decoder reads {_mb(decoder_bytes_per_token)} per token, {ratio:.2g} x the {_mb(cal)} the " \
               f"{self.name} profile is calibrated on"
        if ratio < VALIDITY_RANGE[0]:
            return f"below the model's validity range ({size}; fixed overheads dominate and are estimates)"
        if ratio > VALIDITY_RANGE[1]:
            return f"above the model's validity range ({size})"
        return None


# a decoder between these fractions of the calibrated one's bytes per token is within the model's validity range
VALIDITY_RANGE = (0.1, 10.0)
DEFAULT_PREFILL_POSITIONS = 208  # the bench's default request: 144 image tokens + 64 text tokens


def _sig(x: float) -> float:
    """``x`` to 4 significant digits."""
    return float(f"{x:.4g}")


def _mb(n: float) -> str:
    return f"{n / 1e6:.3g} MB"


def parse_profile(data: dict, source: str, target: Target | None = None) -> DeviceProfile:
    """A validated profile from its TOML form, of a device of ``target`` (None: the registered target it names);
    ``UserError`` names ``source`` and the key at fault."""
    bad = Where(source).bad
    device = data.get("device") if isinstance(data, dict) else None
    if not isinstance(device, dict):
        raise bad("device", "missing (a [device] table)")
    if target is None:
        target = find_target(device.get("target"))
        if target is None:
            raise bad("device.target", f"is {device.get('target')!r}; known: {', '.join(registry())}")
    elif device.get("target") != target.name:
        raise bad("device.target", f"is {device.get('target')!r}: a {device.get('target')} device, not {target.name}")
    sections = ("device", *([target.name] if target.profile_options else []))
    for key in data:
        if key not in sections:
            raise bad(key, f"is not a section of a {target.name} profile ({', '.join(sections)})")
    profile = parse_table(DeviceProfile, device, "device", bad)
    object.__setattr__(profile, "source", source)
    if target.profile_options:
        object.__setattr__(profile, "options", parse_table(target.profile_options, data.get(target.name, {}),
                                                          target.name, bad))
    return profile


def load_profile(name_or_path: str | Path, target: Target | None = None) -> DeviceProfile:
    """A profile by name (``NAME.toml`` in ``target.profiles_dir``, the shipped ``device_profiles/`` without a
    target) or path, of a device of ``target`` (None: any); ``UserError`` names the file and key."""
    directory = target.profiles_dir if target is not None else PROFILES_DIR
    path, data = read_named_toml(name_or_path, directory, "--profile", "device profile")
    named = data.get("device", {}).get("target") if isinstance(data.get("device"), dict) else None
    if target is not None and isinstance(named, str) and named != target.name:
        raise UserError(f"--profile {name_or_path}: is a {named} device, not {target.name}")
    return parse_profile(data, str(path), target)
