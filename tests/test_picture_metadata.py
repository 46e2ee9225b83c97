"""Pictures we serve or send keep pixels and a colour profile, never the source's metadata.

A clinic's JPEG can carry the patient's name and birth date in its comment, EXIF, XMP
or IPTC; previews, region thumbnails and the pictures sent to a model server must not.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from django.urls import reverse
from PIL import ExifTags, Image, ImageCms

from annotations import services
from annotations.models import TaskState
from imaging import inspect_image, render_preview, samples
from imaging.patches import PatchSettings, plan_patches
from imaging.pixels import encode_jpeg, encode_png
from inference.backends.served import encode_image
from tests.factories import draft_fields

PHI = "Jane Doe 1950-02-03"
XMP = (
    '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    f'xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="{PHI}"/></rdf:RDF>'
    '</x:xmpmeta><?xpacket end="w"?>'
).encode()
SOI, SOS = 0xFFD8, 0xFFDA
COM, APP1, APP2, APP13 = 0xFFFE, 0xFFE1, 0xFFE2, 0xFFED


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of each segment from SOI up to the start of scan."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    segments, pos = [], 2
    while pos < len(data):
        marker, length = struct.unpack(">HH", data[pos : pos + 4])
        assert marker >> 8 == 0xFF, f"no marker at {pos}"
        if marker == SOS:
            break
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return segments


def assert_pixels_and_srgb_only(data: bytes) -> None:
    segments = jpeg_segments(data)
    markers = [m for m, _ in segments]
    assert COM not in markers, "a JPEG comment survived"
    assert APP1 not in markers, "EXIF or XMP survived"
    assert APP13 not in markers, "IPTC/Photoshop data survived"
    icc = [p for m, p in segments if m == APP2]
    assert len(icc) == 1 and icc[0].startswith(b"ICC_PROFILE\0")
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc[0][14:]))
    assert "sRGB" in ImageCms.getProfileDescription(profile)
    assert b"Jane" not in data and b"1950" not in data


def _iptc_app13(text: str) -> bytes:
    """A Photoshop APP13 segment with an IPTC By-line (2:80) record."""
    value = text.encode()
    iptc = b"\x1c\x02\x50" + struct.pack(">H", len(value)) + value
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\0\0" + struct.pack(">I", len(iptc)) + iptc
    payload = b"Photoshop 3.0\0" + resource
    return struct.pack(">HH", APP13, len(payload) + 2) + payload


def write_phi_jpeg(path: Path) -> Path:
    """A derm photo whose JPEG carries a comment, EXIF (GPS, date, description), XMP and IPTC."""
    photo = samples.write_derm_photo(path.with_suffix(".plain.jpg"), size=(640, 480))
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = PHI
    exif[ExifTags.Base.DateTime] = "2024:05:06 07:08:09"
    exif[ExifTags.Base.Artist] = PHI
    exif[ExifTags.Base.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 22.0, 1.0),
    }
    buf = io.BytesIO()
    with Image.open(photo) as img:
        img.save(buf, "JPEG", quality=90, comment=PHI, exif=exif, xmp=XMP)
    data = buf.getvalue()
    path.write_bytes(data[:2] + _iptc_app13(PHI) + data[2:])
    return path


@pytest.fixture
def phi_jpeg(tmp_path: Path) -> Path:
    return write_phi_jpeg(tmp_path / "phi.jpg")


def test_the_source_really_carries_every_kind_of_metadata(phi_jpeg: Path) -> None:
    segments = jpeg_segments(phi_jpeg.read_bytes())
    markers = [m for m, _ in segments]
    assert COM in markers and APP13 in markers
    app1 = [p for m, p in segments if m == APP1]
    assert any(p.startswith(b"Exif\0\0") for p in app1)
    assert any(p.startswith(b"http://ns.adobe.com/xap/1.0/\0") for p in app1)
    with Image.open(phi_jpeg) as img:  # and Pillow keeps the comment in info
        img.load()
        assert img.info["comment"] == PHI.encode()


def test_encode_jpeg_keeps_pixels_and_the_srgb_profile_only(phi_jpeg: Path) -> None:
    with Image.open(phi_jpeg) as img:
        img.load()
        data = encode_jpeg(img)
        original = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert_pixels_and_srgb_only(data)
    with Image.open(io.BytesIO(data)) as out:
        assert out.size == (640, 480)
        assert np.abs(np.asarray(out, dtype=np.int16) - original).mean() < 3


def test_a_preview_of_the_photo_carries_no_metadata(phi_jpeg: Path) -> None:
    preview = render_preview(phi_jpeg, inspect_image(phi_jpeg), max_size=256)
    assert_pixels_and_srgb_only(encode_jpeg(preview))


def test_the_web_preview_carries_no_metadata(people, client_for, phi_jpeg: Path) -> None:
    result = services.image_ingest(
        project=people.project, source=phi_jpeg, original_name="phi.jpg", enqueue=False
    )
    assert result.ok and result.task is not None
    response = client_for(people.pathologist).get(reverse("task-preview", args=[result.task.pk]))
    assert response.status_code == 200
    assert_pixels_and_srgb_only(b"".join(response.streaming_content))


def test_slide_region_thumbnails_carry_only_the_srgb_profile(
    people, client_for, sample_files
) -> None:
    result = services.image_ingest(
        project=people.project,
        source=sample_files["slide"],
        original_name="slide.tiff",
        enqueue=False,
    )
    task = result.task
    plan = plan_patches(sample_files["slide"], PatchSettings(patch_size=128, max_patches=2))
    services.task_transition(task_id=task.pk, to=TaskState.QUEUED)
    claimed = services.task_claim(task_id=task.pk)
    draft = services.draft_record(
        task_id=task.pk,
        attempt=claimed.attempt,
        fields=draft_fields(regions=[r.as_dict() for r in plan.regions]),
    )
    response = client_for(people.pathologist).get(reverse("draft-region", args=[draft.pk, 0]))
    assert response.status_code == 200
    assert_pixels_and_srgb_only(b"".join(response.streaming_content))


def _picture_with_metadata(mode: str = "RGB") -> Image.Image:
    img = Image.new(mode, (64, 48), (200, 120, 90) if mode.startswith("RGB") else 128)
    img.info["comment"] = PHI.encode()
    img.info["exif"] = Image.Exif().tobytes()
    img.info["xmp"] = XMP
    return img


def test_the_model_server_gets_a_jpeg_without_metadata() -> None:
    data, mime = encode_image(_picture_with_metadata(), "jpeg")
    assert mime == "image/jpeg"
    assert_pixels_and_srgb_only(data)


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return chunks


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16"])
def test_the_model_server_gets_a_png_without_text_or_exif(mode: str) -> None:
    img = _picture_with_metadata(mode)
    img.info["dpi"] = (72, 72)
    data, mime = encode_image(img, "png")
    assert mime == "image/png"
    chunks = png_chunks(data)
    assert not {b"tEXt", b"zTXt", b"iTXt", b"eXIf"} & set(chunks)
    assert b"Jane" not in data
    with Image.open(io.BytesIO(data)) as out:
        assert out.mode == img.mode and out.tobytes() == img.tobytes()  # pixels exact


def test_encode_png_keeps_a_palette_and_its_transparency() -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    img.info["comment"] = PHI.encode()
    with Image.open(io.BytesIO(encode_png(img))) as out:
        assert out.mode == "P" and out.info.get("transparency") == 0
        assert out.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
