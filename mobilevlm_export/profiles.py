"""Device profiles (``device_profiles/*.toml``): what a target device can do, validated on load.

```toml
[device]
name = "snapdragon-8-gen-3"
target = "snapdragon"              # onnx | orin | snapdragon
precisions = ["fp32", "8da4w"]     # what the device's runtime executes
threads = 4
memory_gb = 12
bandwidth_gbps = 76.8              # peak DRAM bandwidth (cite the source in a comment)
int8_gops = 1000                   # peak int8 throughput of the cores used
max_context = 2048                 # the longest KV cache to build for
bandwidth_efficiency = 0.49        # fraction of peak a decoder reaches (calibrated on published figures)
compute_efficiency = 0.5
```
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.recipes import read_named_toml

PROFILES_DIR = Path(__file__).resolve().parent.parent / "device_profiles"
_NUMBERS = ("memory_gb", "bandwidth_gbps", "int8_gops", "bandwidth_efficiency", "compute_efficiency")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    target: str
    precisions: tuple[str, ...]
    threads: int
    memory_gb: float
    bandwidth_gbps: float
    int8_gops: float
    max_context: int
    bandwidth_efficiency: float
    compute_efficiency: float
    cpu_cores: dict = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

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


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A profile by name (``device_profiles/NAME.toml``) or path; ``UserError`` names the file and key."""
    path, data = read_named_toml(name_or_path, PROFILES_DIR, "--profile", "device profile")
    data = data.get("device")
    if not isinstance(data, dict):
        raise UserError(f"{path}: key 'device' missing (a [device] table)")
    known = set(DeviceProfile.__dataclass_fields__) - {"source"}
    for key in set(data) - known:
        raise UserError(f"{path}: key 'device.{key}' is unknown (known: {', '.join(sorted(known))})")
    for key in known - {"cpu_cores"}:
        if key not in data:
            raise UserError(f"{path}: key 'device.{key}' missing")
    for key in _NUMBERS:
        if not isinstance(data[key], int | float) or data[key] <= 0:
            raise UserError(f"{path}: key 'device.{key}' must be a positive number")
    if any(data[k] > 1 for k in ("bandwidth_efficiency", "compute_efficiency")):
        raise UserError(f"{path}: key 'device.bandwidth_efficiency'/'compute_efficiency' must be <= 1")
    for key in ("threads", "max_context"):
        if not isinstance(data[key], int) or data[key] < 1:
            raise UserError(f"{path}: key 'device.{key}' must be a positive integer")
    return DeviceProfile(**{**data, "precisions": tuple(data["precisions"]), "source": str(path)})
