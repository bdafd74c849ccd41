#!/usr/bin/python3
"""The Debian packages, built and used as a Debian user would.

usage: test_debian.py SOURCE_ROOT

1. debian/libmaas0.symbols lists exactly the header's MAAS_EXPORT functions
   (scripts/update-symbols --check), and debian/changelog's upstream version
   is the project's.
2. A copy of the source tree (the files git knows of, or the whole tree
   without build directories) in a temporary directory is built with
   `dpkg-buildpackage -us -uc -b`: every build dependency must be installed
   from Debian, and dh_makeshlibs -c4 fails the build when the library's
   exports and the symbols file differ. The source tree is never written.
3. libmaas0, libmaas-dev and maas-tools hold what they should (the library,
   the development files and man pages of section 3, the programs and man
   pages of section 1), and lintian reports neither an error nor a warning.
   An override (debian/PACKAGE.lintian-overrides) is allowed only with a
   comment above it that says why, and must still match a tag.
4. The packages are unpacked (`dpkg -x`) into a temporary root, and against
   that root a C program is built through pkg-config (shared), through
   libmaas-static.pc (static) and through CMake's find_package; each, and the
   packaged `maas`, stream a generation from the packaged maas-emulator.

A missing tool is a failure, not a skip: CI must run this. Set
MAAS_PACKAGING_KEEP=1 to keep the temporary directory.
"""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONSUMER = os.path.join(HERE, "..", "install", "consumer")
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from emu import Emulator  # noqa: E402

PACKAGES = ("libmaas0", "libmaas-dev", "maas-tools")
TOOLS = ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "dpkg-deb", "dpkg-gensymbols",
         "lintian", "cc", "pkg-config", "cmake", "readelf", "nm")


class Failure(Exception):
    pass


def undocumented_overrides(root):
    """The lines of debian/*lintian-overrides that override a tag with no
    comment just above them (a comment may stand for a group of lines)."""
    found = []
    paths = glob.glob(os.path.join(root, "debian", "*lintian-overrides"))
    paths += glob.glob(os.path.join(root, "debian", "source", "lintian-overrides"))
    for path in sorted(paths):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        documented = False
        for n, line in enumerate(lines, 1):
            s = line.strip()
            if s.startswith("#"):
                documented = True
            elif not s:
                documented = False
            elif not documented:
                found.append("%s:%d: %s" % (os.path.relpath(path, root), n, s))
    return found


def clean_env():
    """The environment without what `meson test` and the build under test add."""
    env = dict(os.environ)
    for k in list(env):
        if k in ("LD_LIBRARY_PATH", "LD_PRELOAD", "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR",
                 "PKG_CONFIG_SYSROOT_DIR", "CFLAGS", "CXXFLAGS", "LDFLAGS", "CPPFLAGS",
                 "MESON_TEST_ITERATION", "MAKEFLAGS", "MFLAGS", "DESTDIR") \
                or k.startswith(("ASAN_", "UBSAN_", "TSAN_", "DEB_", "DH_")):
            del env[k]
    return env


def sh(cmd, cwd=None, env=None, timeout=600, check=True):
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    r = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise Failure("exit status %d:\n%s%s" % (r.returncode, r.stdout[-6000:], r.stderr[-6000:]))
    return r


def project_version(root):
    with open(os.path.join(root, "meson.build"), encoding="utf-8") as f:
        return re.search(r"project\([^)]*?version\s*:\s*'([^']+)'", f.read(), re.S).group(1)


def source_files(root):
    """The files of the source tree, without build directories or VCS data."""
    if os.path.isdir(os.path.join(root, ".git")) or os.path.isfile(os.path.join(root, ".git")):
        r = sh(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        return [f for f in r.stdout.split("\0") if f and os.path.isfile(os.path.join(root, f))]
    files = []
    for dirpath, dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirs[:] = [d for d in dirs if d != ".git" and not (rel == "." and d.startswith("build"))]
        files += [os.path.normpath(os.path.join(rel, n)) for n in names]
    return files


def copy_tree(root, dest):
    for f in source_files(root):
        os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(root, f), os.path.join(dest, f), follow_symlinks=False)


def deb_files(deb):
    r = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True)
    files = []
    for line in r.stdout.splitlines():
        name = line.split(None, 5)[-1].split(" -> ")[0]
        files.append(name[1:] if name.startswith(".") else name)
    return files


def check_contents(debs, version, multiarch):
    lib = "/usr/lib/" + multiarch
    want = {
        "libmaas0": [lib + "/libmaas.so.0", lib + "/libmaas.so." + version],
        "libmaas-dev": [lib + "/libmaas.so", lib + "/libmaas.a", "/usr/include/maas/maas.h",
                        "/usr/include/maas/maas.hpp", lib + "/pkgconfig/libmaas.pc",
                        lib + "/pkgconfig/libmaas-static.pc",
                        lib + "/cmake/libmaas/libmaasConfig.cmake",
                        lib + "/cmake/libmaas/libmaasConfigVersion.cmake",
                        "/usr/share/man/man3/libmaas.3.gz", "/usr/share/man/man3/libmaas-errors.3.gz",
                        "/usr/share/man/man3/libmaas-multi.3.gz",
                        "/usr/share/man/man3/libmaas-threading.3.gz",
                        "/usr/share/man/man3/libmaas-cpp.3.gz",
                        "/usr/share/man/man3/maas_generate.3.gz",
                        "/usr/share/doc/libmaas/examples/multi-poll.c"],
        "maas-tools": ["/usr/bin/maas", "/usr/bin/maas-demo", "/usr/bin/maas-emulator",
                       "/usr/share/man/man1/maas.1.gz", "/usr/share/man/man1/maas-demo.1.gz",
                       "/usr/share/man/man1/maas-emulator.1.gz"],
    }
    # What must stay out of a package.
    forbid = {
        "libmaas0": [r"/usr/include/", r"\.a$", r"/libmaas\.so$", r"/usr/share/man/", r"/usr/bin/"],
        "libmaas-dev": [r"/usr/bin/", r"/man1/", r"libmaas\.so\.0"],
        "maas-tools": [r"/usr/include/", r"/usr/lib/", r"/man3/"],
    }
    problems = []
    for pkg in PACKAGES:
        files = deb_files(debs[pkg])
        for f in want[pkg]:
            if f not in files:
                problems.append("%s lacks %s" % (pkg, f))
        for pat in forbid[pkg]:
            for f in files:
                if re.search(pat, f):
                    problems.append("%s holds %s" % (pkg, f))
    if problems:
        raise Failure("\n".join(problems))


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: test_debian.py SOURCE_ROOT\n")
        return 2
    root = os.path.realpath(argv[1])
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        print("FAIL: missing %s (scripts/deps installs them)" % ", ".join(missing))
        return 1
    version = project_version(root)

    # 1. The files that must follow the code.
    problems = []
    r = sh([sys.executable, os.path.join(root, "scripts", "update-symbols"), "--check"], check=False)
    if r.returncode != 0:
        problems.append(r.stdout + r.stderr)
    with open(os.path.join(root, "debian", "changelog"), encoding="utf-8") as f:
        m = re.match(r"libmaas \(([^)]+)\)", f.readline())
    upstream = m.group(1).rsplit("-", 1)[0] if m else None
    if upstream != version:
        problems.append("debian/changelog is at %s, the project at %s: add a changelog entry "
                        "(dch -v %s-1)" % (m.group(1) if m else "?", version, version))
    if problems:
        print("FAIL:\n" + "\n".join(problems))
        return 1

    tmp = os.path.realpath(tempfile.mkdtemp(prefix="maas-deb-"))
    if tmp.startswith(root + os.sep):
        print("FAIL: the temporary directory %s is inside the source tree" % tmp)
        return 1
    before = sorted(source_files(root))
    emu = None
    try:
        # 2. Build the packages from a copy.
        src = os.path.join(tmp, "libmaas-" + version)
        copy_tree(root, src)
        env = clean_env()
        env["DEB_BUILD_OPTIONS"] = "nocheck parallel=%d" % max(1, min(os.cpu_count() or 1, 4))
        t = time.monotonic()
        r = sh(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env, timeout=3600,
               check=False)
        if r.returncode != 0:
            raise Failure("dpkg-buildpackage failed (%d):\n%s%s"
                          % (r.returncode, r.stdout[-8000:], r.stderr[-8000:]))
        print("packages built in %.1f s" % (time.monotonic() - t), flush=True)
        debs = {}
        for pkg in PACKAGES:
            found = glob.glob(os.path.join(tmp, "%s_%s-*_*.deb" % (pkg, version)))
            if len(found) != 1:
                raise Failure("no single %s package: %s" % (pkg, os.listdir(tmp)))
            debs[pkg] = found[0]
        changes = glob.glob(os.path.join(tmp, "libmaas_*.changes"))
        if len(changes) != 1:
            raise Failure("no single .changes file: %s" % os.listdir(tmp))

        # 3. What is in them, and lintian.
        multiarch = sh(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]).stdout.strip()
        check_contents(debs, version, multiarch)
        undocumented = undocumented_overrides(root)
        if undocumented:
            raise Failure("lintian overrides without a comment that says why:\n"
                          + "\n".join(undocumented))
        # Overridden tags are not shown (lintian would count them towards
        # --fail-on); info level shows an override that no longer matches.
        r = sh(["lintian", "--fail-on", "error,warning", "--display-level", ">=info",
                changes[0]], check=False, timeout=1200)
        tags = [l for l in (r.stdout + r.stderr).splitlines() if re.match(r"^[EWIPXO]: ", l)]
        print("lintian: %d tags" % len(tags))
        for l in tags:
            print("  " + l)
        bad = [l for l in tags if l.startswith(("E: ", "W: "))
               or re.search(r": (unused|mismatched)-override ", l)]
        if bad or r.returncode != 0:
            raise Failure("lintian reports errors, warnings or stale overrides (exit %d):\n%s%s"
                          % (r.returncode, "\n".join(bad), r.stderr[-3000:]))

        # 4. Unpack into a root and build against it.
        sysroot = os.path.join(tmp, "root")
        for pkg in PACKAGES:
            sh(["dpkg", "-x", debs[pkg], sysroot])
        libdir = os.path.join(sysroot, "usr", "lib", multiarch)
        bindir = os.path.join(sysroot, "usr", "bin")
        os.environ["MAAS_EMULATOR"] = os.path.join(bindir, "maas-emulator")
        emu = Emulator()
        run_env = emu.env()
        run_env.pop("LD_LIBRARY_PATH", None)

        pc_env = clean_env()
        # libmaas from the root; libcurl and jansson from the system.
        pc_env["PKG_CONFIG_LIBDIR"] = ":".join([
            os.path.join(libdir, "pkgconfig"), "/usr/lib/%s/pkgconfig" % multiarch,
            "/usr/lib/pkgconfig", "/usr/share/pkgconfig"])

        def pkg_config(*args):
            return shlex.split(sh(["pkg-config", "--define-variable=prefix=" + sysroot + "/usr"]
                                  + list(args), env=pc_env).stdout)

        work = os.path.join(tmp, "consumer")
        os.makedirs(work)
        shutil.copy(os.path.join(CONSUMER, "consumer.c"), work)
        programs = {}
        flags = pkg_config("--cflags", "--libs", "libmaas")
        if not any(f == "-I" + sysroot + "/usr/include" for f in flags) and \
                not any(f.startswith("-L" + libdir) for f in flags):
            raise Failure("pkg-config does not point into the unpacked root: %s" % flags)
        sh(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "consumer.c", "-o", "shared"] + flags,
           cwd=work)
        programs["pkg-config"] = ([os.path.join(work, "shared")], {"LD_LIBRARY_PATH": libdir})
        sh(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "consumer.c", "-o", "static"]
           + pkg_config("--cflags", "--libs", "libmaas-static"), cwd=work)
        needed = sh(["readelf", "-d", "-W", os.path.join(work, "static")]).stdout
        if "libmaas" in needed:
            raise Failure("the static consumer needs libmaas.so")
        programs["libmaas-static"] = ([os.path.join(work, "static")], {})

        cm = os.path.join(tmp, "cmake")
        shutil.copytree(os.path.join(CONSUMER, "find-package"), cm)
        shutil.copy(os.path.join(CONSUMER, "consumer.c"), cm)
        sh(["cmake", "-S", cm, "-B", os.path.join(cm, "build"),
            "-DCMAKE_PREFIX_PATH=" + os.path.join(sysroot, "usr")], env=clean_env())
        sh(["cmake", "--build", os.path.join(cm, "build")], env=clean_env())
        programs["cmake"] = ([os.path.join(cm, "build", "consumer")], {})
        programs["maas"] = ([os.path.join(bindir, "maas"), "models"], {"LD_LIBRARY_PATH": libdir})

        texts = {}
        for name, (cmd, extra) in programs.items():
            env = dict(run_env)
            env.update(extra)
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
            print("%s: exit %d, %s" % (name, r.returncode, r.stderr.strip()), flush=True)
            if r.returncode != 0 or not r.stdout.strip():
                raise Failure("%s exited with %d, stdout %r, stderr %r"
                              % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
            texts[name] = r.stdout
        if "mistralai/Mistral-7B-Instruct-v0.1" not in texts["maas"]:
            raise Failure("the packaged maas listed no model: %r" % texts["maas"])
        if len({texts[n] for n in ("pkg-config", "libmaas-static", "cmake")}) != 1:
            raise Failure("the consumers printed different texts: %s" % texts)
    except (Failure, subprocess.TimeoutExpired) as e:
        print("FAIL: %s" % e)
        return 1
    finally:
        if emu is not None:
            emu.stop()
        if os.environ.get("MAAS_PACKAGING_KEEP"):
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    after = sorted(source_files(root))
    if after != before:
        print("FAIL: the source tree changed: %s" % sorted(set(after) ^ set(before)))
        return 1
    print("ok: %s built, lintian without errors or warnings, consumers ran against the unpacked root"
          % ", ".join(PACKAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
