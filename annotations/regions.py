"""Region pointers: the rectangles and polygons a reviewer draws on an image with a decision.

Stored on the label as GeoJSON Features in level-0 pixel coordinates (QuPath's and the
Digital Slide Archive's convention), each with a short note. Everything that arrives from a
browser is checked here, once, and rebuilt from the checked values: nothing else is kept.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_REGIONS = 50
MIN_POINTS, MAX_POINTS = 4, 1000  # a closed ring: a triangle is 4 points, the last = the first
MAX_NOTE_CHARS = 500
MAX_JSON_CHARS = 1_000_000
KINDS = ("rectangle", "polygon")


class InvalidRegions(ValueError):
    """Region pointers that cannot be stored; the message is meant for the reviewer."""


def _reject_constant(name: str) -> float:
    raise InvalidRegions(f"Region coordinates must be finite numbers, not {name}.")


def parse_regions(text: str, *, width: int | None, height: int | None) -> list[dict[str, Any]]:
    """The region pointers in a form's JSON text, checked against the image's level-0 size."""
    text = (text or "").strip()
    if not text:
        return []
    if len(text) > MAX_JSON_CHARS:
        raise InvalidRegions("The region pointers are too large.")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError:
        raise InvalidRegions("The region pointers are not valid JSON.") from None
    return validate_regions(value, width=width, height=height)


def validate_regions(value: Any, *, width: int | None, height: int | None) -> list[dict[str, Any]]:
    """Checked, normalised copies of GeoJSON Polygon Features; InvalidRegions otherwise."""
    if isinstance(value, dict) and value.get("type") == "FeatureCollection":
        value = value.get("features")
    if not isinstance(value, list):
        raise InvalidRegions("The region pointers must be a list of GeoJSON Features.")
    if len(value) > MAX_REGIONS:
        raise InvalidRegions(f"At most {MAX_REGIONS} region pointers per decision.")
    return [_feature(item, n, width=width, height=height) for n, item in enumerate(value, start=1)]


def _feature(item: Any, n: int, *, width: int | None, height: int | None) -> dict[str, Any]:
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise InvalidRegions(f"Region {n} is not a GeoJSON Feature.")
    geometry = item.get("geometry")
    if not isinstance(geometry, dict) or geometry.get("type") != "Polygon":
        raise InvalidRegions(f"Region {n} must be a Polygon.")
    rings = geometry.get("coordinates")
    if not isinstance(rings, list) or len(rings) != 1 or not isinstance(rings[0], list):
        raise InvalidRegions(f"Region {n} must be one polygon ring, without holes.")
    ring = rings[0]
    if not MIN_POINTS <= len(ring) <= MAX_POINTS:
        raise InvalidRegions(
            f"Region {n} must have {MIN_POINTS} to {MAX_POINTS} points (a closed ring)."
        )
    points = [_point(p, n, width=width, height=height) for p in ring]
    if points[0] != points[-1]:
        raise InvalidRegions(f"Region {n} is not closed: its last point must be its first.")
    properties = item.get("properties") or {}
    if not isinstance(properties, dict):
        raise InvalidRegions(f"Region {n} has properties that are not an object.")
    note = properties.get("note", "")
    if not isinstance(note, str):
        raise InvalidRegions(f"The note of region {n} must be text.")
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise InvalidRegions(f"The note of region {n} is longer than {MAX_NOTE_CHARS} characters.")
    kind = properties.get("kind", "polygon")
    if kind not in KINDS:
        raise InvalidRegions(f"Region {n} must be a rectangle or a polygon.")
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [points]},
        "properties": {"note": note, "kind": kind},
    }


def _point(p: Any, n: int, *, width: int | None, height: int | None) -> list[float]:
    if not isinstance(p, list) or len(p) != 2:
        raise InvalidRegions(f"Region {n} has a point that is not [x, y].")
    x, y = p
    for c in (x, y):
        # bool is an int in Python; JSON true is no coordinate.
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c):
            raise InvalidRegions(f"Region {n} has a coordinate that is not a finite number.")
    if x < 0 or y < 0 or (width is not None and x > width) or (height is not None and y > height):
        raise InvalidRegions(f"Region {n} reaches outside the image.")
    return [round(float(x), 2), round(float(y), 2)]


def feature_collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}
