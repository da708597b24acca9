#!/usr/bin/env python3
"""Builds a container image without a container engine: an OCI image layout written directly.

The image has a single layer holding the binary at the entrypoint path, every shared library it
loads according to `ldd` (the ELF interpreter included; host symlinks on the way to each library
are mirrored so that the names resolve inside the image as they do on the host), /etc/passwd and
/etc/group with root and nonroot (65532), a minimal /etc/nsswitch.conf, /tmp (1777) and the
--extra files. There is no shell. A statically linked binary gets no libraries.

The output is reproducible: entries sorted, mtime SOURCE_DATE_EPOCH (or 0), owner 0:0 with empty
user and group names, gzip header mtime 0, JSON with sorted keys; the same inputs give the same
digest. Written under --out (default target/image), with <base> the last path element of --name:

  <base>-oci/       OCI image layout (oci-layout, index.json, blobs/sha256/...)
  <base>.oci.tar    the same layout as a tar archive, for `ctr -n k8s.io images import FILE`
                    (index.json names the image with io.containerd.image.name) or
                    `skopeo copy oci-archive:FILE docker://REGISTRY/...`
  <base>.digest     the manifest digest (sha256:...), e.g. for the chart's image.digest

Only the Python 3 standard library is used. Examples (from the repository root):

  e2e/image/build-image.py                                     # target/release/eali
  e2e/image/build-image.py --binary target/image/pause --name localhost/eali-e2e/pause \\
      --tag 1 --entrypoint /pause
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROG = "build-image"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# `uname -m` -> (OCI architecture, variant).
ARCHES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}
# ELF e_machine -> OCI architecture, to refuse a binary for another machine than the host's.
ELF_MACHINES = {3: "386", 40: "arm", 62: "amd64", 183: "arm64", 21: "ppc64le", 22: "s390x", 243: "riscv64"}

# Directories glibc's loader searches without /etc/ld.so.cache (the image has none).
DEFAULT_LIB_DIRS = {
    "/lib", "/usr/lib", "/lib64", "/usr/lib64",
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
    "/lib/arm-linux-gnueabihf", "/usr/lib/arm-linux-gnueabihf",
    "/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu",
    "/lib/powerpc64le-linux-gnu", "/usr/lib/powerpc64le-linux-gnu",
    "/lib/s390x-linux-gnu", "/usr/lib/s390x-linux-gnu",
    "/lib/riscv64-linux-gnu", "/usr/lib/riscv64-linux-gnu",
}

PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnonroot:x:65532:\n"
NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"


class BuildError(Exception):
    """An expected failure: reported as one line, exit status 1."""


def log(msg):
    print(msg, flush=True)


def warn(msg):
    print(f"{PROG}: warning: {msg}", file=sys.stderr, flush=True)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def run_quiet(argv, cwd=None):
    """stdout of argv, or None when it cannot run or fails."""
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# Inputs


def cargo_version():
    path = os.path.join(REPO, "Cargo.toml")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BuildError(f"cannot read {path} for the default --tag: {e.strerror}") from None
    try:
        import tomllib  # Python 3.11+

        version = tomllib.loads(raw.decode()).get("package", {}).get("version")
    except ImportError:
        m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', raw.decode(), re.M | re.S)
        version = m.group(1) if m else None
    except ValueError as e:
        raise BuildError(f"{path}: {e}") from None
    if not isinstance(version, str) or not version:
        raise BuildError(f"no [package] version in {path}; pass --tag")
    return version


def cargo_repository():
    try:
        import tomllib

        with open(os.path.join(REPO, "Cargo.toml"), "rb") as f:
            return tomllib.load(f).get("package", {}).get("repository")
    except Exception:  # best effort: the label is left out
        return None


def elf_info(path):
    """(OCI architecture or None, ELF interpreter or None) of the ELF file at path."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                raise BuildError(f"{path} is not an ELF executable")
            cls, data = head[4], head[5]
            if cls not in (1, 2) or data not in (1, 2):
                raise BuildError(f"{path}: unknown ELF class/encoding")
            e = "<" if data == 1 else ">"
            (machine,) = struct.unpack_from(e + "H", head, 18)
            if cls == 2:
                (phoff,) = struct.unpack_from(e + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
            else:
                (phoff,) = struct.unpack_from(e + "I", head, 28)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
            interp = None
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                ph = f.read(phentsize)
                if len(ph) < phentsize:
                    break
                (p_type,) = struct.unpack_from(e + "I", ph, 0)
                if p_type != 3:  # PT_INTERP
                    continue
                if cls == 2:
                    off, _, _, size = struct.unpack_from(e + "QQQQ", ph, 8)
                else:
                    off, _, _, size = struct.unpack_from(e + "IIII", ph, 4)
                f.seek(off)
                interp = f.read(size).split(b"\0", 1)[0].decode(errors="replace")
            return ELF_MACHINES.get(machine), interp
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e.strerror}") from None
    except struct.error:
        raise BuildError(f"{path}: truncated ELF header") from None


def ldd_libraries(binary, interp):
    """Absolute paths of the shared objects the binary loads, interpreter included; [] if static."""
    try:
        p = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise BuildError("ldd not found (install libc-bin)") from None
    except subprocess.SubprocessError as e:
        raise BuildError(f"ldd {binary} failed: {e}") from None
    out = (p.stdout + p.stderr).strip()
    static = "not a dynamic executable" in out or "statically linked" in out
    if static:
        if interp:
            raise BuildError(
                f"ldd says {binary} is not dynamic but it names the interpreter {interp} "
                "(a binary for another architecture?)"
            )
        return []
    if p.returncode != 0:
        raise BuildError(f"ldd {binary} failed (exit {p.returncode}): {out or 'no output'}")
    if not interp:
        # No PT_INTERP: the kernel runs it without a loader, nothing to copy.
        return []
    libs, missing = [], []
    for line in p.stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        if "=>" in line:
            name, _, rest = line.partition("=>")
            rest = rest.strip()
            if rest.startswith("not found"):
                missing.append(name.strip())
                continue
            path = rest.split(" (", 1)[0].strip()
        else:
            path = line.split(" (", 1)[0].strip()
        if path.startswith("/"):  # skips linux-vdso.so.1 and other virtual objects
            libs.append(path)
    if missing:
        raise BuildError(f"ldd {binary}: libraries not found: {', '.join(missing)}")
    if interp not in libs:
        libs.append(interp)
    return libs


def dpkg_owners(paths):
    """{path: 'package version'} for the paths dpkg knows, best effort."""
    owners = {}
    if not paths or not shutil.which("dpkg"):
        return owners
    try:
        p = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return owners
    for line in p.stdout.splitlines():
        if line.startswith("diversion ") or ": " not in line:
            continue
        pkgs, path = line.split(": ", 1)
        owners[path.strip()] = pkgs.split(",")[0].strip()
    versions = {}
    pkgs = sorted(set(owners.values()))
    if pkgs and shutil.which("dpkg-query"):
        out = run_quiet(["dpkg-query", "-W", "-f=${binary:Package} ${Version}\\n", *pkgs])
        for line in (out or "").splitlines():
            name, _, version = line.partition(" ")
            versions[name] = version
            versions.setdefault(name.split(":")[0], version)
    return {path: f"{pkg} {versions[pkg]}" if pkg in versions else pkg for path, pkg in owners.items()}


# ---------------------------------------------------------------------------------------------
# The layer's file system


class Tree:
    """Entries of the layer by absolute path: ('dir', mode) | ('file', mode, src|bytes) | ('link', target)."""

    def __init__(self):
        self.entries = {}

    def _parents(self, path):
        parent = posixpath.dirname(path)
        while parent != "/":
            self.add_dir(parent)
            parent = posixpath.dirname(parent)

    def _put(self, path, entry):
        old = self.entries.get(path)
        if old is not None and old != entry:
            if old[0] == entry[0] == "dir":
                return
            raise BuildError(f"{path} would be both {describe(old)} and {describe(entry)} in the image")
        self.entries[path] = entry

    def add_dir(self, path, mode=0o755):
        if path == "/":
            return
        old = self.entries.get(path)
        if old is not None and old[0] == "dir":
            if mode != 0o755:
                self.entries[path] = ("dir", mode)
            return
        self._parents(path)
        self._put(path, ("dir", mode))

    def add_file(self, path, mode, source):
        self._parents(path)
        self._put(path, ("file", mode, source))

    def add_link(self, path, target):
        self._parents(path)
        self._put(path, ("link", target))

    def add_host_path(self, host_path):
        """Copies host_path as the host resolves it: each symlink met on the way (directories
        included, e.g. /lib -> usr/lib) becomes the same symlink in the image, the file's content
        goes to its real path. Returns that real path."""
        pending = [c for c in host_path.split("/") if c]
        cur = "/"
        hops = 0
        while pending:
            comp = pending.pop(0)
            if comp == ".":
                continue
            if comp == "..":
                cur = posixpath.dirname(cur)
                continue
            candidate = posixpath.join(cur, comp)
            try:
                st = os.lstat(candidate)
            except OSError as e:
                raise BuildError(f"cannot read {candidate} (for {host_path}): {e.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise BuildError(f"too many symlinks resolving {host_path}")
                target = os.readlink(candidate)
                self.add_link(candidate, target)
                pending = [c for c in target.split("/") if c] + pending
                if target.startswith("/"):
                    cur = "/"
            elif stat.S_ISDIR(st.st_mode):
                self.add_dir(candidate)
                cur = candidate
            elif stat.S_ISREG(st.st_mode):
                if pending:
                    raise BuildError(f"{candidate} is not a directory (resolving {host_path})")
                self.add_file(candidate, 0o755 if st.st_mode & 0o111 else 0o644, candidate)
                return candidate
            else:
                raise BuildError(f"{candidate} is not a regular file, directory or symlink")
        raise BuildError(f"{host_path} resolves to a directory, not a file")


def describe(entry):
    if entry[0] == "dir":
        return "a directory"
    if entry[0] == "link":
        return f"a symlink to {entry[1]}"
    return "a generated file" if isinstance(entry[2], bytes) else f"a copy of {entry[2]}"


class HashWriter:
    """Counts and hashes the bytes written through it."""

    def __init__(self, out):
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self):
        self.out.flush()


def write_layer(tree, path, mtime):
    """Writes the gzipped layer to path. Returns (diff_id hex, blob digest hex, blob size)."""
    with open(path, "wb") as raw:
        compressed = HashWriter(raw)
        # filename="" and mtime=0: no name and no time in the gzip header.
        gz = gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=compressed, mtime=0)
        uncompressed = HashWriter(gz)
        tar = tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT)
        # Parents before children: sort by path components, not by the raw string.
        for p in sorted(tree.entries, key=lambda p: p.strip("/").split("/")):
            entry = tree.entries[p]
            info = tarfile.TarInfo(p.lstrip("/"))
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry[0] == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = entry[1]
                tar.addfile(info)
            elif entry[0] == "link":
                info.type = tarfile.SYMTYPE
                info.mode = 0o777
                info.linkname = entry[1]
                tar.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.mode = entry[1]
                source = entry[2]
                if isinstance(source, bytes):
                    info.size = len(source)
                    tar.addfile(info, io.BytesIO(source))
                else:
                    try:
                        with open(source, "rb") as f:
                            info.size = os.fstat(f.fileno()).st_size
                            tar.addfile(info, f)
                    except OSError as e:
                        raise BuildError(f"cannot read {source}: {e.strerror}") from None
        tar.close()
        gz.close()
    return uncompressed.hash.hexdigest(), compressed.hash.hexdigest(), compressed.size


# ---------------------------------------------------------------------------------------------
# The layout and its archive


def write_blob(blobs, data):
    digest = sha256_hex(data)
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return digest


def write_archive(layout, path, mtime):
    """Tar of the layout: oci-layout first, then index.json and the blobs, all sorted."""
    names = ["oci-layout", "index.json", "blobs", "blobs/sha256"]
    names += ["blobs/sha256/" + n for n in sorted(os.listdir(os.path.join(layout, "blobs", "sha256")))]
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            full = os.path.join(layout, name)
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if os.path.isdir(full):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                with open(full, "rb") as f:
                    info.size = os.fstat(f.fileno()).st_size
                    tar.addfile(info, f)
    os.replace(tmp, path)


def remove_old_layout(path):
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path) and os.path.exists(os.path.join(path, "oci-layout")):
        shutil.rmtree(path)
    else:
        raise BuildError(f"{path} exists and is not an OCI layout written before; remove it first")


def parse_extra(spec):
    src, sep, dest = spec.partition(":")
    if not sep or not src or not dest.startswith("/") or dest.endswith("/"):
        raise BuildError(f"--extra {spec!r}: expected SRC:DEST with DEST an absolute file path")
    return src, posixpath.normpath(dest)


COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?"


def normalize_name(name):
    """The fully qualified repository, as containerd's CRI looks it up: eali/eali ->
    docker.io/eali/eali, busybox -> docker.io/library/busybox."""
    if not re.fullmatch(rf"(?:{DOMAIN}/)?{COMPONENT}(?:/{COMPONENT})*", name):
        raise BuildError(f"--name {name!r} is not an image repository name (no tag: use --tag)")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return name
    return "docker.io/" + (name if sep else "library/" + name)


def show(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def build(args):
    binary = args.binary
    if not os.path.exists(binary):
        raise BuildError(f"binary {binary} not found (build it first, or pass --binary)")
    if not os.path.isfile(binary):
        raise BuildError(f"{binary} is not a file")
    if not os.access(binary, os.R_OK):
        raise BuildError(f"{binary} is not readable")
    if not args.entrypoint.startswith("/"):
        raise BuildError(f"--entrypoint {args.entrypoint!r} must be an absolute path")
    if not re.fullmatch(r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}", args.tag):
        raise BuildError(f"--tag {args.tag!r} is not a valid image tag")
    args.name = normalize_name(args.name)
    extras = [parse_extra(e) for e in args.extra]
    for src, _ in extras:
        if not os.path.isfile(src):
            raise BuildError(f"--extra source {src} is not a file")

    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0") or "0"
    if not epoch.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds")
    mtime = int(epoch)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))

    machine = os.uname().machine
    if machine not in ARCHES:
        raise BuildError(f"unknown machine {machine!r} (uname -m)")
    arch, variant = ARCHES[machine]
    elf_arch, interp = elf_info(binary)
    if elf_arch and elf_arch != arch:
        raise BuildError(f"{binary} is built for {elf_arch}, this host is {arch}")

    libs = ldd_libraries(binary, interp)

    tree = Tree()
    tree.add_dir("/tmp", 0o1777)
    tree.add_file("/etc/passwd", 0o644, PASSWD.encode())
    tree.add_file("/etc/group", 0o644, GROUP.encode())
    tree.add_file("/etc/nsswitch.conf", 0o644, NSSWITCH.encode())
    tree.add_file(args.entrypoint, 0o755, binary)
    for src, dest in extras:
        mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
        tree.add_file(dest, mode, src)

    real = {lib: tree.add_host_path(lib) for lib in libs}
    # dpkg knows a library by the path its package installed, which may be either name
    # (on a merged-/usr host /lib/x86_64-linux-gnu/libc.so.6, not /usr/lib/...).
    known = dpkg_owners(sorted(set(libs) | set(real.values())))
    owners = {lib: known.get(lib) or known.get(real[lib]) for lib in libs}

    if libs:
        log(f"shared libraries of {show(binary)} ({len(libs)}, from ldd):")
        for lib in libs:
            where = f" -> {real[lib]}" if real[lib] != lib else ""
            owner = owners.get(lib)
            log(f"  {lib}{where}" + (f"  [{owner}]" if owner else "  [no dpkg owner]"))
    else:
        log(f"{show(binary)} is statically linked: no shared libraries")
    odd = sorted({posixpath.dirname(lib) for lib in libs if posixpath.dirname(lib) not in DEFAULT_LIB_DIRS})
    env = [PATH_ENV]
    if odd:
        warn(f"libraries outside the loader's default directories: {', '.join(odd)}; setting LD_LIBRARY_PATH")
        env.append("LD_LIBRARY_PATH=" + ":".join(odd))

    base = args.name.rstrip("/").rsplit("/", 1)[-1]
    out = args.out
    layout = os.path.join(out, f"{base}-oci")
    tmp_layout = os.path.join(out, f".{base}-oci.tmp")
    os.makedirs(out, exist_ok=True)
    if os.path.lexists(tmp_layout):
        shutil.rmtree(tmp_layout)
    blobs = os.path.join(tmp_layout, "blobs", "sha256")
    os.makedirs(blobs)

    layer_tmp = os.path.join(blobs, ".layer.tmp")
    diff_id, layer_digest, layer_size = write_layer(tree, layer_tmp, mtime)
    os.replace(layer_tmp, os.path.join(blobs, layer_digest))

    labels = {
        "org.opencontainers.image.title": base,
        "org.opencontainers.image.version": args.tag,
    }
    source = args.source if args.source is not None else (
        cargo_repository() or run_quiet(["git", "-C", REPO, "remote", "get-url", "origin"]))
    if source:
        labels["org.opencontainers.image.source"] = source
    else:
        warn("no source URL (no package.repository, no git remote origin): label "
             "org.opencontainers.image.source left out; pass --source")
    revision = args.revision if args.revision is not None else run_quiet(["git", "-C", REPO, "rev-parse", "HEAD"])
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    platform = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant

    config = {
        **platform,
        "created": created,
        "config": {
            "User": args.user,
            "Env": env,
            "Entrypoint": [args.entrypoint],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{
            "created": created,
            "created_by": f"e2e/image/build-image.py: {args.entrypoint}, {len(libs)} shared libraries"
                          + (f", {len(extras)} extra files" if extras else ""),
            "comment": "built without a container engine",
        }],
    }
    config_bytes = canonical_json(config)
    config_digest = write_blob(blobs, config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": f"sha256:{config_digest}", "size": len(config_bytes)},
        "layers": [{"mediaType": MT_LAYER, "digest": f"sha256:{layer_digest}", "size": layer_size}],
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = write_blob(blobs, manifest_bytes)

    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": f"sha256:{manifest_digest}",
            "size": len(manifest_bytes),
            "platform": platform,
            "annotations": {
                # containerd (ctr images import) names the image after this one...
                "io.containerd.image.name": f"{args.name}:{args.tag}",
                # ...and OCI tools (skopeo oci:DIR:TAG) look the tag up here.
                "org.opencontainers.image.ref.name": args.tag,
            },
        }],
    }
    with open(os.path.join(tmp_layout, "index.json"), "wb") as f:
        f.write(canonical_json(index))
    with open(os.path.join(tmp_layout, "oci-layout"), "wb") as f:
        f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))

    remove_old_layout(layout)
    os.replace(tmp_layout, layout)
    archive = os.path.join(out, f"{base}.oci.tar")
    write_archive(layout, archive, mtime)
    with open(os.path.join(out, f"{base}.digest"), "w") as f:
        f.write(f"sha256:{manifest_digest}\n")

    size = len(config_bytes) + layer_size + len(manifest_bytes)
    log(f"layer sha256:{layer_digest} ({len(tree.entries)} entries, diff_id sha256:{diff_id})")
    log(f"layout {show(layout)}")
    log(f"image {args.name}:{args.tag}")
    log(f"digest sha256:{manifest_digest}")
    log(f"size {size} ({size / 1048576:.2f} MiB)")
    log(f"archive {show(archive)}")


def main():
    ap = argparse.ArgumentParser(
        prog="build-image.py",
        description="Build a single-layer OCI image (binary + its shared libraries) without a container engine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/eali"),
                    help="the executable (default: target/release/eali)")
    ap.add_argument("--name", default="docker.io/eali/eali", help="image repository (default: %(default)s)")
    ap.add_argument("--tag", default=None, help="image tag (default: [package] version of Cargo.toml)")
    ap.add_argument("--out", default=os.path.join(REPO, "target/image"), help="output directory (default: target/image)")
    ap.add_argument("--entrypoint", default="/usr/local/bin/eali", help="path of the binary in the image (default: %(default)s)")
    ap.add_argument("--user", default="65532:65532", help="config.User (default: %(default)s)")
    ap.add_argument("--extra", action="append", default=[], metavar="SRC:DEST",
                    help="also put the file SRC at DEST in the image (repeatable)")
    ap.add_argument("--source", default=None,
                    help="org.opencontainers.image.source (default: package.repository or git remote origin)")
    ap.add_argument("--revision", default=None,
                    help="org.opencontainers.image.revision (default: git rev-parse HEAD)")
    args = ap.parse_args()
    try:
        if args.tag is None:
            args.tag = cargo_version()
        build(args)
    except BuildError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"{PROG}: error:{where}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
