"""Assemble the modelbus base image's build context from this machine's Python — no registry.

    python3 deploy/base-image/rootfs.py CONTEXT_DIR [--with numpy ...]

writes ``CONTEXT_DIR/rootfs.tar``, ``CONTEXT_DIR/modelbus.tar`` and ``CONTEXT_DIR/Dockerfile``
(``FROM scratch`` and an ``ADD`` of each) and prints the image's tag,
``localhost/modelbus-base:<digest>``. ``build.sh``
beside this file builds it with podman or docker; the tests build it through the engine's API.

The root filesystem is this machine's CPython under ``/usr/local``: the interpreter, the standard
library (without its tests, tkinter, idlelib, ensurepip and the static library), the installed
distributions the worker imports (asked of a fresh interpreter, so the list follows the code) plus
any named with ``--with`` and what they require, the modelbus packages, and every shared library
``ldd`` finds for all those binaries, at the paths it found them (glibc and the dynamic loader
included). Copying the interpreter that made the closures means a closure archive's Python and
package versions match inside the image exactly.

The tarballs are deterministic (sorted, owner root, files keep their modification times so their
``.pyc`` stay valid), and the digest of their contents (bytecode aside) names the image: a rebuild
is skipped while this machine's Python, its packages and modelbus are unchanged. modelbus has a
layer of its own (<1 MB), so a change to its code adds that layer, not another copy of Python.
Writing the context takes about 2 s, building it about 4 s; the image is ~110 MB. It has no
shell: images derived from it ``COPY`` their model in (``RUN`` needs ``deploy/Dockerfile``).
Supported: CPython laid out as python.org builds it (pyenv, uv, the official images, a
``./configure --prefix`` build): ``<prefix>/lib/pythonX.Y`` and its ``site-packages``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proxy.backend.images import (  # noqa: E402 (the checkout's packages, whatever the caller's path)
    BASE_LABEL,
    ENTRY_LABEL,
    FIT_COMMAND,
    FIT_LABEL,
    MODEL_CLOSURE_PATH,
    WORKER_COMMAND,
)

BASE_REPOSITORY = "localhost/modelbus-base"
_PREFIX = PurePosixPath("/usr/local")
_OWN_PACKAGES = ("bus", "transports", "proxy", "container_manager", "chooser")
_SKIPPED_DISTRIBUTIONS = {"modelbus", "pip", "setuptools", "wheel"}
_SKIPPED_STDLIB = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "__phello__",
}
_SKIPPED_EXTENSIONS = re.compile(r"^(_test|_xxtest|_ctypes_test|_tkinter|xxlimited|xxsubtype)")


@dataclass(frozen=True, slots=True)
class BaseContext:
    """A build context (``Dockerfile`` + ``rootfs.tar``) for the base image, and its name."""

    directory: Path
    digest: str  # of rootfs.tar's contents and the Dockerfile

    @property
    def tag(self) -> str:
        return f"{BASE_REPOSITORY}:{self.digest[:16]}"


def write_base_context(directory: Path, *, extra_packages: Iterable[str] = ()) -> BaseContext:
    """Write the base image's build context into ``directory``.

    ``extra_packages`` names more installed distributions (with their requirements) to include,
    for models that import them (numpy, pandas…).
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = dict(_interpreter_files())
    files.update(_distribution_files(_distributions(extra_packages)))
    own = dict(_modelbus_files())
    libraries = dict(_native_libraries(files))
    files.update(libraries)
    library_dirs = [
        str(_PREFIX / "lib"),
        *sorted({str(PurePosixPath(d).parent) for d in libraries}),
    ]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    links = {
        str(_PREFIX / "bin" / "python3"): f"python{version}",
        str(_PREFIX / "bin" / "python"): f"python{version}",
    }
    # Two layers: modelbus changes often, Python and its packages seldom (and stay cached).
    rootfs_digest = _write_rootfs(directory / "rootfs.tar", files, _etc_files(), links)
    own_digest = _write_rootfs(directory / "modelbus.tar", own, _modelbus_metadata(), {})
    digest = hashlib.sha256(f"{rootfs_digest}\n{own_digest}".encode()).hexdigest()
    dockerfile = _DOCKERFILE.format(
        library_path=":".join(dict.fromkeys(library_dirs)),
        base_label=BASE_LABEL,
        entry_label=ENTRY_LABEL,
        closure=MODEL_CLOSURE_PATH,
        digest=digest,
        entrypoint=json.dumps(list(WORKER_COMMAND)),
        fit_label=FIT_LABEL,
        fit_command=json.dumps(list(FIT_COMMAND)),
    )
    (directory / "Dockerfile").write_text(dockerfile)
    digest = hashlib.sha256(f"{digest}\n{dockerfile}".encode()).hexdigest()
    return BaseContext(directory, digest)


_DOCKERFILE = """\
# The modelbus base image: this machine's CPython and the modelbus worker (made by rootfs.py).
FROM scratch
ADD rootfs.tar /
ADD modelbus.tar /
ENV PATH=/usr/local/bin:/usr/bin:/bin \\
    LD_LIBRARY_PATH={library_path} \\
    LANG=C.UTF-8 \\
    PYTHONUNBUFFERED=1
LABEL {base_label}="{digest}" \\
      {entry_label}="closure:{closure}" \\
      {fit_label}='{fit_command}'
WORKDIR /model
ENTRYPOINT {entrypoint}
"""


def _interpreter_files() -> Iterator[tuple[str, Path]]:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    executable = Path(sys.executable).resolve()
    yield str(_PREFIX / "bin" / f"python{version}"), executable
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    target = _PREFIX / "lib" / f"python{version}"
    for source in _walk(stdlib, skip=_SKIPPED_STDLIB):
        relative = source.relative_to(stdlib)
        if relative.parts[0].startswith("config-") or _is_skipped_file(source):
            continue
        yield str(target / relative.as_posix()), source


def _is_skipped_file(path: Path) -> bool:
    name = path.name
    if name.endswith(".pyc"):
        return ".opt-" in name  # keep the plain bytecode: the worker starts faster
    if name.endswith(".so") and path.parent.name == "lib-dynload":
        return _SKIPPED_EXTENSIONS.match(name) is not None
    return name.endswith((".a", ".exe"))


def _walk(root: Path, *, skip: set[str]) -> Iterator[Path]:
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in skip)
        for name in sorted(names):
            path = Path(directory, name)
            if path.is_file():
                yield path


def _distributions(extra: Iterable[str]) -> list[str]:
    """Distributions the replica and fit workers import (asked of a fresh interpreter), plus
    ``extra`` and all they require."""
    script = (
        "import json, sys, proxy.backend.worker, proxy.fitting.worker; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise LookupError(f"cannot import the worker to list its packages: {done.stderr[-2000:]}")
    owners = importlib.metadata.packages_distributions()
    tops = {module.partition(".")[0] for module in json.loads(done.stdout)}
    wanted = [dist for top in sorted(tops) for dist in owners.get(top, [])] + list(extra)
    found: dict[str, None] = {}
    while wanted:
        name = wanted.pop()
        key = name.lower().replace("_", "-")
        if key in found or key in _SKIPPED_DISTRIBUTIONS:
            continue
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            if name in extra:
                raise LookupError(f"package {name} is not installed here") from None
            continue
        found[key] = None
        wanted.extend(
            m.group(0)
            for r in requires
            if "extra ==" not in r and (m := re.match(r"[A-Za-z0-9._-]+", r))
        )
    return sorted(found)


def _distribution_files(names: list[str]) -> Iterator[tuple[str, Path]]:
    site = _site()
    for name in names:
        dist = importlib.metadata.distribution(name)
        base = Path(str(dist.locate_file(""))).resolve()
        for file in dist.files or ():
            relative = PurePosixPath(file.as_posix())
            source = Path(str(dist.locate_file(file)))
            if ".." in relative.parts or "__pycache__" in relative.parts or not source.is_file():
                continue  # scripts outside site-packages; bytecode is rebuilt on first import
            if not source.resolve().is_relative_to(base):
                continue
            yield str(site / relative), source


def _modelbus_files() -> Iterator[tuple[str, Path]]:
    for package in _OWN_PACKAGES:
        for source in _walk(ROOT / package, skip={"__pycache__"}):
            if source.suffix in (".py", ".md", ".typed"):
                yield str(_site() / source.relative_to(ROOT).as_posix()), source


def _etc_files() -> dict[str, bytes]:
    return {
        "/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n"
        b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "/etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    }


def _modelbus_metadata() -> dict[str, bytes]:
    """modelbus's dist-info, so ``importlib.metadata.version("modelbus")`` answers."""
    try:
        release = importlib.metadata.version("modelbus")
    except importlib.metadata.PackageNotFoundError:
        release = "0"
    info = _site() / f"modelbus-{release}.dist-info"
    return {
        str(info / "METADATA"): (
            f"Metadata-Version: 2.1\nName: modelbus\nVersion: {release}\n".encode()
        ),
        str(info / "top_level.txt"): "\n".join(_OWN_PACKAGES).encode() + b"\n",
    }


def _site() -> PurePosixPath:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return _PREFIX / "lib" / f"python{version}" / "site-packages"


def _native_libraries(files: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    """The shared libraries (and the dynamic loader) the binaries need, at the paths ``ldd``
    resolved them to; libraries shipped inside a copied package travel with it."""
    binaries = sorted(
        str(src)
        for src in files.values()
        if src.suffix == ".so" or ".so." in src.name or os.access(src, os.X_OK)
    )
    copied = {src.resolve() for src in files.values()}
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "/nonexistent")
    done = subprocess.run(["ldd", *binaries], capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        found = re.match(r"\s*(?:\S+ => )?(/\S+) \(0x", line)
        if found is None:
            continue
        path = Path(found.group(1))
        real = path.resolve()
        if real in copied:
            continue
        if real.parent == libdir.resolve():
            yield str(_PREFIX / "lib" / path.name), real  # libpython
        else:
            yield str(PurePosixPath(path.as_posix())), real


def _write_rootfs(
    path: Path, files: dict[str, Path], generated: dict[str, bytes], links: dict[str, str]
) -> str:
    """A deterministic tarball of ``files`` (image path → source), ``generated`` ones and
    symlinks. Returns the SHA-256 of what it holds — names, modes, contents — but bytecode:
    which ``.pyc`` exist changes as the host's Python imports modules, not what the image does.
    """
    directories = {"/tmp": 0o1777, "/root": 0o700, "/model": 0o755, "/etc": 0o755}
    for target in [*files, *generated, *links]:
        for parent in PurePosixPath(target).parents:
            if str(parent) != "/":
                directories.setdefault(str(parent), 0o755)
    digest = hashlib.sha256()

    def add(info: tarfile.TarInfo, content: bytes | None = None) -> None:
        if "__pycache__/" not in info.name:
            digest.update(f"{info.name}\0{info.type!r}\0{info.mode:o}\0{info.linkname}\0".encode())
            digest.update(hashlib.sha256(content or b"").digest())
        tar.addfile(info, None if content is None else io.BytesIO(content))

    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(directories):
            add(_info(name, tarfile.DIRTYPE, directories[name]))
        for name in sorted([*generated, *files]):
            if name in generated:
                content, mode, mtime = generated[name], 0o644, 0
            else:
                stat = files[name].stat()
                content = files[name].read_bytes()
                mode, mtime = stat.st_mode & 0o777, int(stat.st_mtime)
            info = _info(name, tarfile.REGTYPE, mode, mtime)
            info.size = len(content)
            add(info, content)
        for name, target in sorted(links.items()):
            info = _info(name, tarfile.SYMTYPE, 0o777)
            info.linkname = target
            add(info)
    return digest.hexdigest()


def _info(name: str, kind: bytes, mode: int, mtime: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type = kind
    info.mode = mode
    info.mtime = mtime  # kept for files: their .pyc stay valid
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("context", type=Path, help="the directory to write the context into")
    parser.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="an installed distribution to include too, with its requirements (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        context = write_base_context(args.context, extra_packages=args.extra)
    except LookupError as exc:
        print(f"rootfs.py: {exc}", file=sys.stderr)
        return 1
    print(context.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
