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

    def predict(self, decoder_bytes_per_token: float, decoder_ops_per_token: float, vision_ops: float) -> dict:
        """Roofline predictions: decode is bandwidth-bound (weights read once per token), prefill and the vision
        encoder compute-bound; each scaled by the profile's calibrated efficiency."""
        bw = self.bandwidth_gbps * 1e9 * self.bandwidth_efficiency
        ops = self.int8_gops * 1e9 * self.compute_efficiency
        return {"device": self.name, "decode_tokens_per_s": round(bw / decoder_bytes_per_token, 1),
                "prefill_tokens_per_s": round(ops / decoder_ops_per_token, 1),
                "vision_ms": round(vision_ops / ops * 1e3, 1),
                "assumptions": f"{self.bandwidth_gbps} GB/s x {self.bandwidth_efficiency}, "
                               f"{self.int8_gops} GOPS x {self.compute_efficiency}"}


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
