"""What the clinician chose in the panel, kept apart from widget and logic (saved in Slicer's settings)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


@dataclass
class Parameters:
    server_url: str = DEFAULT_SERVER_URL
    model: str = ""
    strategy: str = "most_anomalous"
    colour_map: str = "anomaly"
    opacity: float = 0.5
    transparent_below: float = 0.02  # fraction of the colour range left see-through, so normal tissue stays visible
    label_tag: str = "final"
    inference_options: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # e.g. {"epochs": 2, "minutes": 5}
    poll_seconds: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> "Parameters":
        """Unknown or broken saved settings fall back to defaults instead of breaking the panel."""
        try:
            saved = json.loads(text or "{}")
        except json.JSONDecodeError:
            saved = {}
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known}) if isinstance(saved, dict) \
            else cls()

    def validated_opacity(self) -> float:
        return min(max(float(self.opacity), 0.0), 1.0)
