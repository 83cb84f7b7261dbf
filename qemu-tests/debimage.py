"""Container images made from Debian's packages: a program, the shared libraries it needs and the
dynamic loader, for any architecture the harness boots.

Nothing is installed on the host: the program's package and its library dependencies are fetched
with `apt-get download PACKAGE:ARCH` into the harness cache and unpacked there (brigvm.fetch_deb,
unpack_deb), so an arm64 image is built the same way as an amd64 one. The libraries are found from
the ELF files themselves (`readelf -d`: NEEDED; `readelf -l`: the program interpreter), not from
`ldd`, which would have to run the foreign binary. A library is looked for in the package of the
ELF that needs it and then in that package's `lib*` Depends, which is where Debian's shlibs put
every directly needed library.
"""

import functools
import os
import re
import shutil

import brigvm

# Debian's multiarch directory names.
TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu",
            "armhf": "arm-linux-gnueabihf", "mipsel": "mipsel-linux-gnu"}


def elf_needed(path):
    out = brigvm.run(["readelf", "-d", "--wide", path])
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def elf_interpreter(path):
    m = re.search(r"Requesting program interpreter: ([^\]]+)\]",
                  brigvm.run(["readelf", "-l", "--wide", path]))
    return m.group(1) if m else None


@functools.cache
def lib_depends(package, deb_arch):
    """The `lib*` packages that `package` depends on (alternatives and virtual ones left out)."""
    out = brigvm.run(["apt-cache", "depends", f"{package}:{deb_arch}"])
    names = re.findall(r"^\s*\|?(?:Pre)?Depends: ([^<\s:]+)", out, re.M)
    return [n for n in names if n.startswith("lib")]


class ImageBuilder:
    """Copies files out of unpacked packages of one architecture into `dest`."""

    def __init__(self, arch, dest):
        self.arch = arch
        self.dest = dest
        self.triplet = TRIPLETS[arch.deb_arch]
        self.trees = {}  # package -> unpacked directory
        self.sonames = set()

    def tree(self, package):
        if package not in self.trees:
            deb = brigvm.fetch_deb(f"{package}:{self.arch.deb_arch}")
            self.trees[package] = brigvm.unpack_deb(deb)
        return self.trees[package]

    def copy(self, package, rel, as_rel=None):
        """Copy the file at `rel` of `package` (following symlinks inside the package) to
        `as_rel` (default: the same path) in the image."""
        src = resolve_in(self.tree(package), rel)
        dst = os.path.join(self.dest, (as_rel or rel).lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
        return dst

    def find_library(self, soname, owner):
        """(package, path) of `soname`, from `owner` or one of its library dependencies."""
        dirs = [f"lib/{self.triplet}", f"usr/lib/{self.triplet}", "lib", "usr/lib"]
        for package in self.owner_then_depends(owner):
            tree = self.tree(package)
            for d in dirs:
                if os.path.lexists(os.path.join(tree, d, soname)):
                    return package, os.path.join(d, soname)
        raise RuntimeError(f"{soname} (needed by a file of {owner}) is in neither {owner} "
                           f"nor its library dependencies")

    def owner_then_depends(self, owner):
        yield owner
        yield from lib_depends(owner, self.arch.deb_arch)

    def add_program(self, package, rel):
        """The program, every library it needs (transitively) and its interpreter."""
        todo = [(package, self.copy(package, rel))]
        interpreter = elf_interpreter(todo[0][1])
        while todo:
            owner, path = todo.pop()
            for soname in elf_needed(path):
                if soname in self.sonames:
                    continue
                self.sonames.add(soname)
                lib_package, lib_rel = self.find_library(soname, owner)
                todo.append((lib_package, self.copy(lib_package, lib_rel)))
        if interpreter:
            # The loader is in libc6, which every dynamically linked program depends on.
            self.copy("libc6", interpreter)


def resolve_in(tree, rel):
    """The real file behind `rel` in an unpacked package, where absolute symlinks (Debian's
    /lib64/ld-linux-x86-64.so.2) point into the package, not into this machine."""
    rel = rel.lstrip("/")
    for _ in range(16):
        path = os.path.join(tree, rel)
        if not os.path.islink(path):
            if not os.path.isfile(path):
                raise RuntimeError(f"{rel} missing from {tree}")
            return path
        target = os.readlink(path)
        if target.startswith("/"):
            rel = target.lstrip("/")
        else:
            rel = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    raise RuntimeError(f"symlink loop at {rel} in {tree}")


def build_image(arch, dest, package, programs, files=None):
    """An image directory at `dest`: `programs` (paths inside `package`) with their libraries and
    loader, the mount points a container needs, and `files` ({path: text}).

    The program and library part is kept in the cache per package version and architecture: the
    dependency look-ups (apt-cache, readelf) take a minute on a busy machine."""
    deb = os.path.basename(brigvm.fetch_deb(f"{package}:{arch.deb_arch}"))[: -len(".deb")]
    cached = os.path.join(brigvm.CACHE, "images", deb)
    with brigvm.cache_lock():
        if not os.path.exists(cached + ".done"):
            shutil.rmtree(cached, ignore_errors=True)
            builder = ImageBuilder(arch, cached)
            for program in programs:
                builder.add_program(package, program)
            open(cached + ".done", "w").close()
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(cached, dest, symlinks=True)
    for d in ("proc", "sys", "dev", "tmp", "run", "etc"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    brigvm.write_files(dest, files or {})
