#!/usr/bin/env python3
"""Vendor the front-end libraries into static/vendor/ from the npm registry.

Hospital networks are closed, so pages never load scripts from a CDN: the files are
fetched here, once, checked against the registry's integrity hash, and committed.

    python scripts/vendor_static.py           # fetch the pinned versions, rewrite static/vendor/
    python scripts/vendor_static.py --check   # offline: files on disk match MANIFEST.json

Libraries only the tests load (TEST_PINNED: axe-core for the accessibility check in the
browser tests) go to tests/vendor/, with their own MANIFEST.json, so they are never served.

To upgrade a library, change its version (and its integrity, printed by a run with
"integrity": None) in PINNED below, run the script, and commit static/vendor/.

Fetching uses `npm pack` (so a registry mirror configured in .npmrc is honoured); without
npm it downloads the registry's tarball URL with urllib. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

# name -> what to take from the package. `files` maps a path inside the tarball (relative
# to its top folder, normally `package/`) to a path under static/vendor/<dest>/; `dirs`
# does the same for every regular file below a folder. `integrity` is the registry's
# dist.integrity for that version: pinned too, so a registry that changed a published
# tarball is refused (None: accept the registry's value and print it, for a version bump).
PINNED: dict[str, dict] = {
    "htmx.org": {
        "version": "2.0.11",
        "integrity": (
            "sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqj"
            "nIMCgELTNt636dtamA=="
        ),
        "dest": "htmx",
        "files": {
            "dist/htmx.min.js": "htmx.min.js",
            "LICENSE": "LICENSE",
        },
        "dirs": {},
    },
    "openseadragon": {
        "version": "6.1.1",
        "integrity": (
            "sha512-g4iKe2q8B642SaBT3+x4ZF3/8b1TxPPydyjmtrOLgDrlYWMKd9ZXM+1Cb/xa9DVySkvs"
            "/7l6HR1nHKfD5F3Tsw=="
        ),
        "dest": "openseadragon",
        "files": {
            "build/openseadragon/openseadragon.min.js": "openseadragon.min.js",
            # openseadragon.min.js ends with `//# sourceMappingURL=openseadragon.min.js.map`:
            # ship the map so that reference resolves (ManifestStaticFilesStorage fails
            # collectstatic on a missing one, browsers log a 404).
            "build/openseadragon/openseadragon.min.js.map": "openseadragon.min.js.map",
            "LICENSE.txt": "LICENSE",
        },
        # The navigation buttons: point OpenSeadragon's prefixUrl at .../openseadragon/images/.
        "dirs": {"build/openseadragon/images": "images"},
    },
    # Resumable uploads (the tus 1.0.0 protocol) on the upload page.
    "tus-js-client": {
        "version": "4.3.1",
        "integrity": (
            "sha512-ZLeYmjrkaU1fUsKbIi8JML52uAocjEZtBx4DKjRrqzrZa0O4MYwT6db+oqePlspV+FxXJAyFBc/"
            "L5gwUi2OFsg=="
        ),
        "dest": "tus-js-client",
        "files": {
            "dist/tus.min.js": "tus.min.js",
            "dist/tus.min.js.map": "tus.min.js.map",
            "LICENSE": "LICENSE",
        },
        "dirs": {},
    },
    # The insights dashboard's plots: the UMD build needs no bundler and no eval (strict CSP).
    "chart.js": {
        "version": "4.5.1",
        "integrity": (
            "sha512-GIjfiT9dbmHRiYi6Nl2yFCq7kkwdkp1W/lp2J99rX0yo9tgJGn3lKQATztIjb5tVtevcBtIdICNWqlq5+E8/Pw=="
        ),
        "dest": "chart.js",
        "files": {
            "dist/chart.umd.min.js": "chart.umd.min.js",
            # The map its last line names (collectstatic resolves it).
            "dist/chart.umd.min.js.map": "chart.umd.min.js.map",
            "LICENSE.md": "LICENSE.md",
        },
        "dirs": {},
    },
    # The upload page's whole-file checksum: incremental (hashes a multi-GB slide in slices,
    # in constant memory), pure JavaScript: no eval, no WebAssembly (strict CSP).
    "js-sha256": {
        "version": "1.0.0",
        "integrity": (
            "sha512-Bqxf6ENUzYIMzuELCmRNrJOVbjKH1oMgbfYJBKVr/W1Xf9fazpahqCbb24v1pR7XV1isuqhM+w9KW"
            "pK7zCyUQw=="
        ),
        "dest": "js-sha256",
        "files": {
            "build/sha256.min.js": "sha256.min.js",
            "LICENSE.txt": "LICENSE",
        },
        "dirs": {},
    },
}

# Loaded by the browser tests only (tests/vendor/, never collected as static files).
TEST_PINNED: dict[str, dict] = {
    "axe-core": {
        "version": "4.14.1",
        "integrity": (
            "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe"
            "37OgudVGtQ=="
        ),
        "dest": "axe-core",
        "files": {"axe.min.js": "axe.min.js", "LICENSE": "LICENSE"},
        "dirs": {},
    },
}

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENDOR_DIR = REPO_ROOT / "static" / "vendor"
DEFAULT_TEST_VENDOR_DIR = REPO_ROOT / "tests" / "vendor"
MANIFEST_NAME = "MANIFEST.json"
DEFAULT_REGISTRY = "https://registry.npmjs.org/"
NETWORK_TIMEOUT_S = 120


class VendorError(Exception):
    """A failure with a message meant for the person running the script."""


# ---------------------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_integrity(data: bytes, integrity: str, what: str) -> None:
    """Check bytes against an SRI string ("sha512-<base64>", possibly several, space-separated).

    Only sha512 is accepted: npm's sha1 `shasum` is too weak to pin anything on.
    """
    expected = [
        item.split("-", 1)[1].split("?", 1)[0]
        for item in integrity.split()
        if item.startswith("sha512-")
    ]
    if not expected:
        raise VendorError(f"{what}: registry integrity {integrity!r} has no sha512 hash")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")
    if actual not in expected:
        raise VendorError(
            f"{what}: tarball sha512 does not match the registry's integrity\n"
            f"  expected: {integrity}\n  actual:   sha512-{actual}"
        )


# ---------------------------------------------------------------------------- fetching


def npm_executable() -> str | None:
    return shutil.which("npm")


def run_npm(npm: str, args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(
            [npm, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=NETWORK_TIMEOUT_S * 3,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise VendorError(f"npm {' '.join(args)} timed out") from None
    if proc.returncode != 0:
        raise VendorError(
            f"npm {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    return proc.stdout


def registry_dist_npm(npm: str, spec: str, workdir: Path) -> dict:
    out = run_npm(npm, ["view", spec, "dist", "--json"], workdir)
    try:
        dist = json.loads(out)
    except json.JSONDecodeError:
        raise VendorError(f"npm view {spec} dist: unexpected output {out[:200]!r}") from None
    if isinstance(dist, list):  # a range matching several versions; we always pin exactly
        raise VendorError(f"{spec} matches several versions: pin an exact version")
    if not isinstance(dist, dict) or "tarball" not in dist or "integrity" not in dist:
        raise VendorError(f"npm view {spec} dist: no tarball/integrity in {dist!r}")
    return dist


def registry_url() -> str:
    url = os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry")
    return (url or DEFAULT_REGISTRY).rstrip("/") + "/"


def http_get(url: str) -> bytes:
    if urllib.parse.urlsplit(url).scheme != "https":
        raise VendorError(f"refusing to fetch over a non-https URL: {url}")
    request = urllib.request.Request(url, headers={"Accept": "application/json, */*"})
    try:
        with urllib.request.urlopen(request, timeout=NETWORK_TIMEOUT_S) as resp:
            return resp.read()
    except OSError as exc:
        raise VendorError(f"GET {url} failed: {exc}") from exc


def registry_dist_http(name: str, version: str) -> dict:
    url = registry_url() + urllib.parse.quote(name, safe="@") + "/" + version
    meta = json.loads(http_get(url))
    dist = meta.get("dist") or {}
    if "tarball" not in dist or "integrity" not in dist:
        raise VendorError(f"{url}: no dist.tarball/dist.integrity in the registry's answer")
    return dist


def fetch_tarball(name: str, version: str, workdir: Path, use_npm: bool) -> tuple[dict, bytes]:
    """The registry's dist metadata and the tarball's bytes, integrity-checked."""
    spec = f"{name}@{version}"
    npm = npm_executable() if use_npm else None
    if npm:
        dist = registry_dist_npm(npm, spec, workdir)
        out = run_npm(npm, ["pack", spec, "--pack-destination", str(workdir), "--json"], workdir)
        try:
            packed = json.loads(out)[0]
            tarball_path = workdir / packed["filename"]
        except (json.JSONDecodeError, LookupError, TypeError):
            raise VendorError(f"npm pack {spec}: unexpected output {out[:200]!r}") from None
        if packed.get("version") != version:
            raise VendorError(f"npm pack {spec} packed version {packed.get('version')!r}")
        data = tarball_path.read_bytes()
    else:
        if use_npm:
            print("npm not found on PATH: downloading the tarball with urllib", file=sys.stderr)
        dist = registry_dist_http(name, version)
        data = http_get(dist["tarball"])
    verify_integrity(data, dist["integrity"], spec)
    return dist, data


# ---------------------------------------------------------------------------- extraction


def member_relpath(member: tarfile.TarInfo) -> str:
    """A tar member's path below the package's top folder, refused if it could escape.

    Every member of the archive goes through this, whether or not it is wanted: an npm
    tarball holds only plain files and folders, so anything else means a tampered one.
    """
    name = member.name.replace("\\", "/")
    if member.issym() or member.islnk():
        raise VendorError(f"refusing tar member {member.name!r}: it is a link")
    if not (member.isfile() or member.isdir()):
        raise VendorError(f"refusing tar member {member.name!r}: not a regular file or folder")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise VendorError(f"refusing tar member {member.name!r}: absolute path")
    normalised = posixpath.normpath(name)
    parts = normalised.split("/")
    if normalised in {".", ""} or ".." in parts:
        raise VendorError(f"refusing tar member {member.name!r}: path escapes the package")
    # npm tarballs have one top folder (`package/` almost always); drop it.
    return "/".join(parts[1:])


def safe_target(dest_dir: Path, relpath: str) -> Path:
    """dest_dir/relpath, refused unless it stays inside dest_dir once normalised."""
    normalised = posixpath.normpath(relpath.replace("\\", "/"))
    if normalised.startswith("/") or normalised == ".." or normalised.startswith("../"):
        raise VendorError(f"refusing destination {relpath!r}: escapes {dest_dir}")
    root = dest_dir.resolve()
    target = (root / normalised).resolve()
    if target == root or root not in target.parents:
        raise VendorError(f"refusing destination {relpath!r}: escapes {dest_dir}")
    return target


def wanted_files(spec: dict, available: list[str]) -> dict[str, str]:
    """Tarball path -> destination path (relative to the package's vendor folder)."""
    selected: dict[str, str] = {}
    for src, dst in spec.get("files", {}).items():
        if src not in available:
            raise VendorError(f"{src!r} is not in the tarball")
        selected[src] = dst
    for src_dir, dst_dir in spec.get("dirs", {}).items():
        prefix = src_dir.rstrip("/") + "/"
        found = [p for p in available if p.startswith(prefix)]
        if not found:
            raise VendorError(f"folder {src_dir!r} is not in the tarball (or is empty)")
        for src in found:
            selected[src] = posixpath.join(dst_dir, src[len(prefix) :])
    return selected


def extract_selected(data: bytes, spec: dict, dest_dir: Path) -> list[str]:
    """Write the wanted files of a package tarball under dest_dir; their relative paths."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            rel = member_relpath(member)  # validates every member, wanted or not
            if member.isfile() and rel:
                members[rel] = member
        written = []
        for src, dst in sorted(wanted_files(spec, sorted(members)).items()):
            target = safe_target(dest_dir, dst)
            fh = tar.extractfile(members[src])
            if fh is None:
                raise VendorError(f"cannot read {src!r} from the tarball")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fh.read())
            written.append(posixpath.normpath(dst))
    return written


# ---------------------------------------------------------------------------- vendoring


def vendor(vendor_dir: Path, use_npm: bool, pinned_packages: dict | None = None) -> dict:
    pinned_packages = PINNED if pinned_packages is None else pinned_packages
    vendor_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "generated_by": "scripts/vendor_static.py",
        "packages": {},
    }
    staged: list[tuple[Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix="vendor-static-") as tmp:
        tmpdir = Path(tmp)
        for name, spec in pinned_packages.items():
            version = spec["version"]
            print(f"fetching {name}@{version}")
            workdir = tmpdir / f"pack-{spec['dest']}"
            workdir.mkdir()
            dist, data = fetch_tarball(name, version, workdir, use_npm)
            pinned = spec.get("integrity")
            if pinned is None:
                print(f"  pin this: {name!r} integrity {dist['integrity']!r}")
            elif pinned != dist["integrity"]:
                raise VendorError(
                    f"{name}@{version}: the registry's integrity differs from the pinned one\n"
                    f"  pinned:   {pinned}\n  registry: {dist['integrity']}\n"
                    "A published version's tarball never changes: check the registry "
                    "(or the mirror in .npmrc) before updating the pin."
                )
            verify_integrity(data, pinned or dist["integrity"], f"{name}@{version}")
            stage = tmpdir / f"stage-{spec['dest']}"
            written = extract_selected(data, spec, stage)
            files = {
                posixpath.join(spec["dest"], rel): sha256_file(stage / rel)
                for rel in sorted(written)
            }
            manifest["packages"][name] = {
                "version": version,
                "tarball": dist["tarball"],
                "integrity": dist["integrity"],
                "dest": spec["dest"],
                "files": files,
            }
            staged.append((stage, safe_target(vendor_dir, spec["dest"])))
            for path in files:
                print(f"  {path}")
        # Everything fetched and checked: only now replace what is on disk.
        for stage, target in staged:
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(stage, target)
    write_manifest(vendor_dir / MANIFEST_NAME, manifest)
    return manifest


def write_manifest(path: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")


def check(vendor_dir: Path, pinned_packages: dict | None = None) -> list[str]:
    """Problems with the vendored files (empty when they match MANIFEST.json). No network."""
    pinned_packages = PINNED if pinned_packages is None else pinned_packages
    manifest_path = vendor_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return [f"{manifest_path} is missing: run `python scripts/vendor_static.py`"]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        packages = manifest["packages"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return [f"{manifest_path} is unreadable ({exc}): run `python scripts/vendor_static.py`"]

    problems = []
    for name in sorted(set(pinned_packages) | set(packages)):
        if name not in packages:
            problems.append(f"{name}: pinned in the script but not in {MANIFEST_NAME}")
            continue
        if name not in pinned_packages:
            problems.append(f"{name}: in {MANIFEST_NAME} but no longer pinned in the script")
            continue
        entry = packages[name]
        if entry.get("version") != pinned_packages[name]["version"]:
            problems.append(
                f"{name}: vendored version {entry.get('version')} but the script pins "
                f"{pinned_packages[name]['version']}"
            )
        listed = entry.get("files") or {}
        if not listed:
            problems.append(f"{name}: {MANIFEST_NAME} lists no files")
        for rel, expected in sorted(listed.items()):
            try:
                path = safe_target(vendor_dir, rel)
            except VendorError as exc:
                problems.append(f"{name}: {exc}")
                continue
            if not path.is_file():
                problems.append(f"{rel}: missing")
            elif sha256_file(path) != expected:
                problems.append(f"{rel}: sha256 differs from {MANIFEST_NAME} (file was changed)")
        try:
            dest = safe_target(vendor_dir, entry.get("dest") or "")
        except VendorError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if dest.is_dir():
            for path in sorted(p for p in dest.rglob("*") if p.is_file()):
                rel = path.relative_to(vendor_dir).as_posix()
                if rel not in listed:
                    problems.append(f"{rel}: not listed in {MANIFEST_NAME}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify the vendored files against MANIFEST.json (sha256); no network",
    )
    parser.add_argument(
        "--vendor-dir",
        type=Path,
        default=DEFAULT_VENDOR_DIR,
        help=f"where the files go (default: {DEFAULT_VENDOR_DIR.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--test-vendor-dir",
        type=Path,
        default=DEFAULT_TEST_VENDOR_DIR,
        help="where the tests-only files go "
        f"(default: {DEFAULT_TEST_VENDOR_DIR.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--no-npm",
        action="store_true",
        help="download the tarballs with urllib from $NPM_CONFIG_REGISTRY instead of npm pack",
    )
    args = parser.parse_args(argv)
    targets = [(args.vendor_dir, PINNED), (args.test_vendor_dir, TEST_PINNED)]

    if args.check:
        problems = [p for vendor_dir, pinned in targets for p in check(vendor_dir, pinned)]
        if problems:
            print(f"vendored static files do not match {MANIFEST_NAME}:", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            print(
                "Re-vendor with `python scripts/vendor_static.py` (never edit these by hand).",
                file=sys.stderr,
            )
            return 1
        count = sum(
            len(p["files"])
            for vendor_dir, _ in targets
            for p in json.loads((vendor_dir / MANIFEST_NAME).read_text())["packages"].values()
        )
        print(f"OK: {count} vendored files match {MANIFEST_NAME}")
        return 0

    for vendor_dir, pinned in targets:
        try:
            manifest = vendor(vendor_dir, use_npm=not args.no_npm, pinned_packages=pinned)
        except VendorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        versions = ", ".join(f"{n}@{p['version']}" for n, p in manifest["packages"].items())
        print(f"vendored {versions} into {vendor_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
