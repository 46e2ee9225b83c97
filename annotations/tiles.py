"""Deep Zoom for the viewer: signed tile tokens, and the per-process slide and tile caches.

The review page hands OpenSeadragon `/slides/ID.dzi?t=TOKEN`; OpenSeadragon repeats the
query string on every tile URL (`/slides/ID_files/L/C_R.jpeg?t=TOKEN`). The token is signed
with SECRET_KEY and says which file may be read, so a tile request needs neither the
session nor the database: a reviewer's panning never waits on, or holds, a transaction.
The token is signed, not encrypted: it shows the image's storage path and hash to the
person it was minted for, who may see the image anyway. Losing access takes effect on
tiles when the token expires (MEDANNOT_TILE_TOKEN_SECONDS).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core import signing
from django.urls import reverse

from annotations.models import Image
from imaging import deepzoom
from imaging.deepzoom import NoSuchTile, SlideUnreadable

SALT = "medannot.tiles"
TOKEN_PARAM = "t"
_KINDS = ("slide", "photo")


class TokenRefused(Exception):
    """No tile token, or one that is forged or expired: answer 403."""


class WrongImage(Exception):
    """A valid token for another image: answer 404 (the image is not revealed)."""


@dataclass(frozen=True)
class TileGrant:
    """What a valid token allows: reading one stored file as tiles."""

    image_id: int
    user_id: int | None
    file: str  # relative to MEDIA_ROOT
    kind: str  # "slide" or "photo"
    sha: str  # a prefix of the image's sha256: names its cached tiles

    @property
    def path(self) -> Path:
        return Path(settings.MEDIA_ROOT) / self.file

    def etag(self, level: int, col: int, row: int, quality: int) -> str:
        return f'"{self.sha}-{quality}-{deepzoom.TILE_SIZE}-{level}-{col}-{row}"'

    def key(self, level: int, col: int, row: int, quality: int) -> str:
        return deepzoom.TileStore.key(self.sha, quality, level, col, row)


# --------------------------------------------------------------------------- tokens


class _BucketedSigner(signing.TimestampSigner):
    """Timestamps rounded down to `bucket` seconds: a page reloaded within the bucket gets
    the same tile URLs, so the browser's cache of tiles keeps serving them."""

    def __init__(self, *, bucket: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bucket = max(1, bucket)

    def timestamp(self) -> str:
        now = int(time.time())
        return signing.b62_encode(now - now % self.bucket)


def token_seconds() -> int:
    return settings.MEDANNOT_TILE_TOKEN_SECONDS


def mint_token(image: Image, user: AbstractBaseUser) -> str:
    """A token for the tiles of `image`, for `user`, valid for MEDANNOT_TILE_TOKEN_SECONDS
    (less up to a twelfth: timestamps are bucketed). The caller has checked access."""
    payload = {
        "i": image.pk,
        "u": user.pk,
        "f": image.file,
        "k": image.kind,
        "h": image.sha256[:24],
    }
    bucket = min(3600, token_seconds() // 12)
    return _BucketedSigner(bucket=bucket, salt=SALT).sign_object(payload)


# Tokens already verified, with their timestamp: a viewer sends the same token with every
# tile, and checking a signature costs more than serving a cached tile.
_verified: dict[str, tuple[int, TileGrant]] = {}
_VERIFIED_MAX = 4096


def grant_for(token: str, image_id: int) -> TileGrant:
    """The grant of a tile token for `image_id`; TokenRefused or WrongImage. No database."""
    if not token:
        raise TokenRefused("no tile token: open the slide from its task page")
    known = _verified.get(token)
    if known is not None and time.time() - known[0] <= token_seconds():
        grant = known[1]
    else:
        grant = _verify(token)
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[token] = (signing.b62_decode(token.rsplit(":", 2)[1]), grant)
    if grant.image_id != image_id:
        raise WrongImage("no such image")
    return grant


def _verify(token: str) -> TileGrant:
    try:
        payload = signing.TimestampSigner(salt=SALT).unsign_object(token, max_age=token_seconds())
    except signing.SignatureExpired as exc:
        raise TokenRefused("the tile token has expired: reload the task page") from exc
    except (signing.BadSignature, ValueError, TypeError) as exc:
        raise TokenRefused("invalid tile token") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("i"), int):
        raise TokenRefused("invalid tile token")
    file, kind, sha = payload.get("f"), payload.get("k"), payload.get("h")
    relative = PurePosixPath(file) if isinstance(file, str) else None
    if (
        relative is None
        or relative.is_absolute()
        or ".." in relative.parts
        or kind not in _KINDS
        or not isinstance(sha, str)
    ):
        raise TokenRefused("invalid tile token")  # ours, but not a shape we mint
    return TileGrant(payload["i"], payload.get("u"), file, kind, sha)


def dzi_url(image: Image, user: AbstractBaseUser) -> str:
    """The .dzi URL to give OpenSeadragon, carrying a tile token for `user`."""
    url = reverse("slide-dzi", args=[image.pk])
    return f"{url}?{urlencode({TOKEN_PARAM: mint_token(image, user)})}"


# --------------------------------------------------------------------------- caches

_lock = threading.Lock()
_handles: deepzoom.SlideHandles | None = None
_stores: dict[tuple[str, int], deepzoom.TileStore] = {}


def handles() -> deepzoom.SlideHandles:
    """This process's open slides (one LRU for every thread)."""
    global _handles
    if _handles is None:
        with _lock:
            if _handles is None:
                _handles = deepzoom.SlideHandles(
                    max_handles=settings.MEDANNOT_SLIDE_CACHE_HANDLES,
                    cache_bytes=settings.MEDANNOT_SLIDE_CACHE_BYTES,
                )
    return _handles


def store() -> deepzoom.TileStore:
    """The tile cache on disk, MEDIA_ROOT/tiles (one object per folder and limit)."""
    root = str(Path(settings.MEDIA_ROOT) / "tiles")
    key = (root, settings.MEDANNOT_TILE_CACHE_BYTES)
    found = _stores.get(key)
    if found is None:
        with _lock:
            found = _stores.setdefault(key, deepzoom.TileStore(Path(root), key[1]))
    return found


def reset() -> None:
    """Close every handle and forget the caches (tests, and settings that changed)."""
    global _handles
    with _lock:
        old, _handles = _handles, None
        for tiles in _stores.values():
            tiles.flush()
        _stores.clear()
        _verified.clear()
    if old is not None:
        old.close_all()


# --------------------------------------------------------------------------- serving


def quality() -> int:
    return settings.MEDANNOT_TILE_QUALITY


def tile_jpeg(grant: TileGrant, level: int, col: int, row: int) -> bytes:
    """A tile's JPEG bytes: from the disk cache, or rendered and kept there.

    NoSuchTile for an address outside the image; SlideUnreadable for a lost or damaged file.
    """
    q = quality()
    tiles = store()
    key = grant.key(level, col, row, q)
    data = tiles.read(key)
    if data is not None:
        return data
    with handles().use(grant.path, grant.kind) as opened:
        data = deepzoom.render_tile(opened, level, col, row, quality=q)
    tiles.write_later(key, data)  # on disk shortly, by the store's writer thread
    return data


def dzi_xml(image: Image) -> str:
    """The .dzi descriptor of `image`; SlideUnreadable if its file is lost or damaged."""
    path = Path(settings.MEDIA_ROOT) / image.file
    if not path.is_file():
        handles().drop(path)
        raise SlideUnreadable("the stored file is missing")
    with handles().use(path, image.kind) as opened:
        return deepzoom.dzi_xml(opened)


def warm(image: Image, max_side: int = 1024) -> int:
    """Render the tiles of the levels at most `max_side` px into the disk cache (what a
    viewer asks for first), so the first page view finds them. Returns how many."""
    grant = TileGrant(image.pk, None, image.file, image.kind, image.sha256[:24])
    q = quality()
    tiles = store()
    done = 0
    with handles().use(grant.path, grant.kind) as opened:
        for level, col, row in deepzoom.small_levels(opened, max_side):
            key = grant.key(level, col, row, q)
            if tiles.read(key) is None:
                tiles.write(key, deepzoom.render_tile(opened, level, col, row, quality=q))
                done += 1
    return done


__all__ = [
    "NoSuchTile",
    "SlideUnreadable",
    "TileGrant",
    "TokenRefused",
    "WrongImage",
    "dzi_url",
    "dzi_xml",
    "grant_for",
    "mint_token",
    "tile_jpeg",
]
