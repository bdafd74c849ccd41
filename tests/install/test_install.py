#!/usr/bin/python3
"""libmaas as its users consume it: install it, then build programs against
the installation from a directory outside the source tree and run them
against maas-emulator.

usage: test_install.py SOURCE_ROOT [SUBTEST...]

The project is configured afresh with `meson setup --prefix` into a
temporary directory (so that the installed pkg-config file and man pages are
those of a real prefix, not of a DESTDIR staging area, and so that the
sanitizer flags of the build under test do not leak into the consumers),
built and installed. Then, from other temporary directories:

  layout      the installed files: libmaas.so.0 (SONAME), libmaas.so, libmaas.a,
              maas/maas.h and maas/maas.hpp, libmaas.pc and libmaas-static.pc,
              the CMake package files, the maas and maas-emulator programs,
              the examples, man pages (3 for every MAAS_EXPORT function and
              for the guides, 1 for the three programs), which groff
              reads without a warning and which name no file of the source
              tree and nothing outside the project; what pkg-config says
  rpath       the installed maas and maas-demo run without LD_LIBRARY_PATH:
              their run path is relative to their own location ($ORIGIN)
  pkgconfig   a C program built with `pkg-config --cflags --libs libmaas`
  static      the same linked with libmaas.a, as getting-started.md says:
              `pkg-config --cflags --libs libmaas-static`
  cpp         a C++17 program using <maas/maas.hpp>
  uninstalled a C program built from the build tree through the uninstalled
              libmaas.pc: its include path reaches include/ and no private
              header (the program includes glibc's <error.h>)
  subproject  a meson project with the source tree as subprojects/libmaas,
              the parent choosing default_library=shared: dependency('libmaas')
              is the subproject's override; no man page is built and
              `meson install` installs nothing of libmaas
  subproject_static  the same with default_library=static: the program
              needs no libmaas.so
  cmake       a CMake project: pkg_check_modules(... IMPORTED_TARGET libmaas)
  cmake_find  a CMake project: find_package(libmaas 0.1) and libmaas::libmaas,
              the prefix in CMAKE_PREFIX_PATH; a request for 1.0 is refused
  cmake_static the same with libmaas::libmaas_static

Each program streams a short generation from the installed maas-emulator;
all must print the same text. The last line reads 'N passed, N failed,
N skipped'; the exit status is 1 if a subtest failed, 77 (skip) if one
could not run for want of a tool (c++, cmake), else 0.
Set MAAS_INSTALL_KEEP=1 to keep the temporary directory.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONSUMER = os.path.join(HERE, "consumer")
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "abi"))
from emu import Emulator  # noqa: E402
from check_exports import header_functions  # noqa: E402

SUBTESTS = ["layout", "rpath", "pkgconfig", "static", "cpp", "uninstalled", "subproject",
            "subproject_static", "cmake", "cmake_find", "cmake_static"]

# The guides installed as man pages (docs/meson.build), section 3.
GUIDE_PAGES = ["libmaas", "libmaas-errors", "libmaas-multi", "libmaas-threading", "libmaas-cpp",
               "libmaas-streaming", "libmaas-configuration"]
INSTALLED_EXAMPLES = ["hello.c", "multi-poll.c", "multi-uv.c", "cpp-example.cpp", "multi-asio.cpp"]

# What an installed man page must not name: a path of the source or build
# tree (its reader may have neither), a Markdown source, a path that climbs
# out of somewhere, or a document that is not part of the project.
SOURCE_PATH_RE = re.compile(
    r"(?<![\w/.-])(?:docs|examples|tests|lib|scripts|build|abi|pkgconfig|debian|cmake|"
    r"subprojects|include/maas)/"
    r"|\w\.md\b|\.\./|/tmp/|/home/")



class Failure(Exception):
    pass


class Skip(Exception):
    pass


def base_env():
    """The environment without what `meson test` adds for the build under test."""
    env = dict(os.environ)
    for k in ("LD_LIBRARY_PATH", "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR", "PKG_CONFIG_SYSROOT_DIR",
              "CFLAGS", "CXXFLAGS", "LDFLAGS", "CPPFLAGS", "MESON_TEST_ITERATION"):
        env.pop(k, None)
    return env


def sh(cmd, cwd=None, env=None, timeout=600, check=True, quiet=False):
    if not quiet:
        print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    r = subprocess.run(cmd, cwd=cwd, env=env or base_env(), capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise Failure("exit status %d:\n%s%s" % (r.returncode, r.stdout, r.stderr))
    return r


def tool(name):
    path = shutil.which(name)
    if not path:
        raise Skip("%s not found" % name)
    return path


def readelf_dynamic(path):
    out = sh(["readelf", "-d", "-W", path]).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    soname = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    runpath = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[([^\]]+)\]", out)
    return needed, soname.group(1) if soname else None, runpath.group(1) if runpath else ""


class Install:
    def __init__(self, root, tmp):
        self.root = root
        self.tmp = tmp
        self.meson = os.environ.get("MESON") or shutil.which("meson")
        if not self.meson:
            raise Failure("meson not found")
        build = os.path.join(tmp, "build")
        self.prefix = os.path.join(tmp, "prefix")
        t = time.monotonic()
        sh([self.meson, "setup", build, root, "--prefix", self.prefix,
            "-Dtests=false", "-Dexamples=true", "-Demulator=true"])
        sh(["ninja", "-C", build])
        sh([self.meson, "install", "-C", build, "--no-rebuild", "--quiet"])
        print("installed into %s in %.1f s" % (self.prefix, time.monotonic() - t), flush=True)
        opts = json.loads(sh([self.meson, "introspect", build, "--buildoptions"]).stdout)
        d = {o["name"]: o["value"] for o in opts}
        self.version = json.loads(sh([self.meson, "introspect", build, "--projectinfo"]).stdout)["version"]

        def where(name):
            return os.path.join(self.prefix, d[name])  # an absolute value stays as it is

        self.build = build
        self.datadir = where("datadir")
        self.libdir = where("libdir")
        self.bindir = where("bindir")
        self.includedir = where("includedir")
        self.mandir = where("mandir")
        self.pcdir = os.path.join(self.libdir, "pkgconfig")

    def env(self, **extra):
        env = base_env()
        env["PKG_CONFIG_PATH"] = self.pcdir
        env.update(extra)
        return env

    def pkg_config(self, *args):
        return shlex.split(sh(["pkg-config"] + list(args), env=self.env()).stdout)


# ---- the subtests ---------------------------------------------------------


def test_layout(inst, work):
    problems = []

    def need(path, what):
        if not os.path.exists(path):
            problems.append("%s not installed: %s" % (what, path))

    so = os.path.join(inst.libdir, "libmaas.so.0")
    need(so, "the shared library")
    need(os.path.join(inst.libdir, "libmaas.so"), "the development link")
    need(os.path.join(inst.libdir, "libmaas.a"), "the static library")
    need(os.path.join(inst.includedir, "maas", "maas.h"), "the C header")
    need(os.path.join(inst.includedir, "maas", "maas.hpp"), "the C++ header")
    need(os.path.join(inst.pcdir, "libmaas.pc"), "the pkg-config file")
    need(os.path.join(inst.pcdir, "libmaas-static.pc"), "the static pkg-config file")
    for f in ("libmaasConfig.cmake", "libmaasConfigVersion.cmake"):
        need(os.path.join(inst.libdir, "cmake", "libmaas", f), "the CMake package file")
    examples = os.path.join(inst.datadir, "doc", "libmaas", "examples")
    for f in INSTALLED_EXAMPLES:
        need(os.path.join(examples, f), "the example the man pages name")
    for prog in ("maas", "maas-emulator"):
        p = os.path.join(inst.bindir, prog)
        if not os.access(p, os.X_OK):
            problems.append("program %s not installed in %s" % (prog, inst.bindir))
    if os.path.exists(so):
        _, soname, _ = readelf_dynamic(so)
        if soname != "libmaas.so.0":
            problems.append("SONAME %s, want libmaas.so.0" % soname)

    pages = ["man1/maas.1", "man1/maas-batch.1", "man1/maas-demo.1", "man1/maas-emulator.1"] + ["man3/%s.3" % g for g in GUIDE_PAGES]
    header = os.path.join(inst.includedir, "maas", "maas.h")
    functions = header_functions(header) if os.path.exists(header) else set()
    if not functions:
        problems.append("no MAAS_EXPORT function in the installed header")
    pages += ["man3/%s.3" % f for f in sorted(functions)]
    for page in pages:
        path = os.path.join(inst.mandir, page)
        if not os.path.exists(path):
            hint = " (is there a docs/ref page for it?)" if page.startswith("man3/") else ""
            problems.append("man page %s not installed%s" % (page, hint))
    man3 = os.path.join(inst.mandir, "man3")
    extra = set(os.listdir(man3) if os.path.isdir(man3) else []) - {"%s.3" % f for f in functions}
    for page in sorted(extra - {"%s.3" % g for g in GUIDE_PAGES}):
        problems.append("man3/%s names no function of the header and is no guide" % page)
    for d in sorted(set(os.listdir(inst.mandir)) - {"man1", "man3"}):
        problems.append("unexpected man page directory %s: %s" % (d, os.listdir(os.path.join(inst.mandir, d))))
    problems += man_page_references(inst.mandir, examples)
    groff = shutil.which("groff")
    if groff:
        for page in pages:
            path = os.path.join(inst.mandir, page)
            if os.path.exists(path):
                # -t: tables; -ww: every warning but line breaking, which long
                # identifiers in narrow table cells cannot always avoid.
                r = sh([groff, "-k", "-t", "-man", "-Tutf8", "-z", "-ww", "-Wbreak", path],
                       check=False, quiet=True)
                if r.returncode != 0 or r.stderr.strip():
                    problems.append("groff on %s: %s" % (page, r.stderr.strip()))
        print("groff read %d man pages" % len(pages))
    else:
        print("groff not found: the man pages are not read")

    # What pkg-config says.
    if inst.pkg_config("--modversion", "libmaas") != [inst.version]:
        problems.append("pkg-config --modversion libmaas is not %s" % inst.version)
    req = " ".join(inst.pkg_config("--print-requires-private", "libmaas"))
    for r in ("libcurl", "jansson"):
        if r not in req:
            problems.append("Requires.private lacks %s: %s" % (r, req))
    flags = inst.pkg_config("--cflags", "--libs", "libmaas")
    for f in ("-I" + inst.includedir, "-L" + inst.libdir, "-lmaas"):
        if f not in flags:
            problems.append("pkg-config --cflags --libs lacks %s: %s" % (f, " ".join(flags)))
    static = inst.pkg_config("--static", "--libs", "libmaas")
    for f in ("-lmaas", "-lpthread", "-lm", "-lcurl", "-ljansson"):
        if f not in static:
            problems.append("pkg-config --static --libs lacks %s: %s" % (f, " ".join(static)))
    if problems:
        raise Failure("\n".join(problems))


def man_page_references(mandir, examples):
    """Problems with what the installed man pages point at."""
    problems = []
    for sect in sorted(os.listdir(mandir)):
        for page in sorted(os.listdir(os.path.join(mandir, sect))):
            path = os.path.join(mandir, sect, page)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for n, line in enumerate(text.split("\n"), 1):
                if line.startswith('.\\"'):  # a roff comment
                    continue
                plain = line.replace("\\-", "-").replace("\\%", "").replace("\\e", "\\")
                plain = re.sub(r"\\f[BIRP]", "", plain)
                m = SOURCE_PATH_RE.search(plain.replace(examples, "EXAMPLES"))
                if m:
                    problems.append("%s/%s:%d names %r: %s" % (sect, page, n, m.group(0), plain.strip()))
                # A path of the installed examples must exist.
                for ex in re.findall(re.escape(examples) + r"/[\w.-]+", plain):
                    if not os.path.exists(ex):
                        problems.append("%s/%s:%d names %s, which is not installed" % (sect, page, n, ex))
    return problems


def test_rpath(inst, work):
    emu_env = inst.emu.env()
    emu_env.pop("LD_LIBRARY_PATH", None)
    for prog in ("maas", "maas-demo"):
        exe = os.path.join(inst.bindir, prog)
        needed, _, runpath = readelf_dynamic(exe)
        if "libmaas.so.0" not in needed:
            raise Failure("%s does not need libmaas.so.0: %s" % (prog, needed))
        if not runpath.startswith("$ORIGIN/"):
            raise Failure("%s has no run path relative to itself: %r" % (prog, runpath))
        where = os.path.normpath(runpath.replace("$ORIGIN", inst.bindir))
        if where != os.path.normpath(inst.libdir):
            raise Failure("%s's run path %s is %s, not %s" % (prog, runpath, where, inst.libdir))
    # They run as installed, the loader told nothing.
    r = sh([os.path.join(inst.bindir, "maas"), "models"], env=emu_env, check=False)
    if r.returncode != 0 or "mistralai/Mistral-7B-Instruct-v0.1" not in r.stdout:
        raise Failure("installed maas models: exit %d, %s%s" % (r.returncode, r.stdout, r.stderr))
    r = sh([os.path.join(inst.bindir, "maas-demo")], env=dict(emu_env, MAAS_DEMO_PAUSE_MS="0"),
           check=False)
    if r.returncode != 0 or "Authentication successful" not in r.stdout:
        raise Failure("installed maas-demo: exit %d, %s%s" % (r.returncode, r.stdout[-2000:], r.stderr))
    return None


def test_uninstalled(inst, work):
    shutil.copy(os.path.join(CONSUMER, "private-headers.c"), work)
    shutil.copy(os.path.join(CONSUMER, "consumer.c"), work)
    env = base_env()
    env["PKG_CONFIG_PATH"] = os.path.join(inst.build, "meson-uninstalled")
    cflags = shlex.split(sh(["pkg-config", "--cflags", "libmaas"], env=env).stdout)
    private = [f for f in os.listdir(os.path.join(inst.root, "lib")) if f.endswith(".h")]
    for f in cflags:
        if f.startswith("-I"):
            for h in private:
                if os.path.exists(os.path.join(f[2:], h)):
                    raise Failure("the uninstalled libmaas.pc's %s reaches the private %s" % (f, h))
    libs = shlex.split(sh(["pkg-config", "--libs", "libmaas"], env=env).stdout)
    cc = tool(os.environ.get("CC", "cc"))
    sh([cc, "-std=gnu99", "-Wall", "-Wextra", "-Werror", "private-headers.c", "-o", "private-headers"]
       + cflags + libs, cwd=work, env=env)
    exe = os.path.join(work, "consumer")
    compile_and_check([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "consumer.c", "-o", exe]
                      + cflags + libs, work, exe)
    libdir = [f[2:] for f in libs if f.startswith("-L")]
    return exe, {"LD_LIBRARY_PATH": ":".join(libdir)}


def compile_and_check(cmd, work, exe):
    sh(cmd, cwd=work)
    if not os.path.exists(exe):
        raise Failure("no %s after %s" % (exe, cmd))
    return exe


def test_pkgconfig(inst, work):
    shutil.copy(os.path.join(CONSUMER, "consumer.c"), work)
    exe = os.path.join(work, "consumer")
    cc = tool(os.environ.get("CC", "cc"))
    cmd = [cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "consumer.c", "-o", exe]
    compile_and_check(cmd + inst.pkg_config("--cflags", "--libs", "libmaas"), work, exe)
    needed, _, _ = readelf_dynamic(exe)
    if "libmaas.so.0" not in needed:
        raise Failure("consumer does not need libmaas.so.0: %s" % needed)
    return exe, {"LD_LIBRARY_PATH": inst.libdir}


def test_static(inst, work):
    shutil.copy(os.path.join(CONSUMER, "consumer.c"), work)
    exe = os.path.join(work, "consumer")
    cc = tool(os.environ.get("CC", "cc"))
    # getting-started.md's recipe, as it is written there.
    cmd = [cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "consumer.c", "-o", exe]
    compile_and_check(cmd + inst.pkg_config("--cflags", "--libs", "libmaas-static"), work, exe)
    needed, _, _ = readelf_dynamic(exe)
    if any(n.startswith("libmaas") for n in needed):
        raise Failure("the static consumer needs %s" % needed)
    syms = sh(["nm", exe]).stdout
    if not re.search(r" T maas_generate$", syms, re.M):
        raise Failure("maas_generate is not linked into the static consumer")
    return exe, {}


def test_cpp(inst, work):
    shutil.copy(os.path.join(CONSUMER, "consumer.cpp"), work)
    exe = os.path.join(work, "consumer")
    cxx = tool(os.environ.get("CXX", "c++"))
    cmd = [cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "consumer.cpp", "-o", exe]
    compile_and_check(cmd + inst.pkg_config("--cflags", "--libs", "libmaas"), work, exe)
    return exe, {"LD_LIBRARY_PATH": inst.libdir}


def subproject(inst, work, library):
    for f in ("meson.build", "meson_options.txt", "consumer.c"):
        shutil.copy(os.path.join(CONSUMER, f), work)
    os.makedirs(os.path.join(work, "subprojects"))
    os.symlink(inst.root, os.path.join(work, "subprojects", "libmaas"))
    # No pkg-config path to the installation: only the subproject can answer.
    env = base_env()
    r = sh([inst.meson, "setup", "build", "-Dmaas_library=" + library], cwd=work, env=env)
    if not re.search(r"Dependency libmaas found: YES \S+ \(overridden\)", r.stdout):
        raise Failure("dependency('libmaas') was not the subproject's override:\n" + r.stdout)
    sh(["ninja", "-C", "build"], cwd=work, env=env)
    problems = []
    # No man page built, nothing of libmaas installed.
    sub = os.path.join(work, "build", "subprojects", "libmaas")
    for dirpath, _, files in os.walk(sub):
        for f in files:
            if re.search(r"\.[137]$", f):
                problems.append("the subproject built the man page %s" % os.path.join(dirpath, f))
    dest = os.path.join(work, "destdir")
    sh([inst.meson, "install", "-C", "build", "--no-rebuild", "--destdir", dest], cwd=work, env=env)
    installed = []
    for dirpath, _, files in os.walk(dest):
        installed += [os.path.relpath(os.path.join(dirpath, f), dest) for f in files]
    if not any(os.path.basename(f) == "consumer" for f in installed):
        problems.append("meson install did not install the parent's consumer: %s" % installed)
    others = [f for f in installed if os.path.basename(f) != "consumer"]
    if others:
        problems.append("meson install installed files of libmaas: %s" % others)
    exe = os.path.join(work, "build", "consumer")
    needed, _, runpath = readelf_dynamic(exe)
    if library == "shared":
        if "libmaas.so.0" not in needed or "subprojects/libmaas" not in runpath:
            problems.append("consumer does not use the subproject's shared library: NEEDED %s, "
                            "RUNPATH %s" % (needed, runpath))
    else:
        if any(n.startswith("libmaas") for n in needed):
            problems.append("the static consumer needs %s" % needed)
        if not re.search(r" T maas_generate$", sh(["nm", exe]).stdout, re.M):
            problems.append("maas_generate is not linked into the static consumer")
    if problems:
        raise Failure("\n".join(problems))
    return exe, {}


def test_subproject(inst, work):
    return subproject(inst, work, "shared")


def test_subproject_static(inst, work):
    return subproject(inst, work, "static")


def test_cmake(inst, work):
    cmake = tool("cmake")
    for f in ("CMakeLists.txt", "consumer.c"):
        shutil.copy(os.path.join(CONSUMER, f), work)
    build = os.path.join(work, "build")
    sh([cmake, "-S", work, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], env=inst.env())
    sh([cmake, "--build", build], env=inst.env())
    exe = os.path.join(build, "consumer")
    needed, _, runpath = readelf_dynamic(exe)
    if "libmaas.so.0" not in needed:
        raise Failure("consumer does not need libmaas.so.0: %s" % needed)
    # CMake links the library by its full path and records the directory.
    return exe, {} if inst.libdir in runpath.split(":") else {"LD_LIBRARY_PATH": inst.libdir}


def cmake_find(inst, work, static):
    cmake = tool("cmake")
    src = os.path.join(work, "src")
    shutil.copytree(os.path.join(CONSUMER, "find-package"), src)
    shutil.copy(os.path.join(CONSUMER, "consumer.c"), src)
    build = os.path.join(work, "build")
    # No pkg-config path: the package files alone must do.
    env = base_env()
    sh([cmake, "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        "-DCMAKE_PREFIX_PATH=" + inst.prefix, "-DMAAS_STATIC=" + ("ON" if static else "OFF")],
       env=env)
    sh([cmake, "--build", build], env=env)
    exe = os.path.join(build, "consumer")
    needed, _, runpath = readelf_dynamic(exe)
    if static:
        if any(n.startswith("libmaas") for n in needed):
            raise Failure("the static consumer needs %s" % needed)
        if not re.search(r" T maas_generate$", sh(["nm", exe]).stdout, re.M):
            raise Failure("maas_generate is not linked into the static consumer")
        return exe, {}
    if "libmaas.so.0" not in needed:
        raise Failure("consumer does not need libmaas.so.0: %s" % needed)
    if inst.libdir not in runpath.split(":"):
        raise Failure("CMake did not record %s as the run path: %r" % (inst.libdir, runpath))
    return exe, {}


def test_cmake_find(inst, work):
    got = cmake_find(inst, work, False)
    # The version file refuses a version this installation does not serve.
    cmake = tool("cmake")
    src = os.path.join(work, "refused")
    os.makedirs(src)
    with open(os.path.join(src, "CMakeLists.txt"), "w") as f:
        f.write("cmake_minimum_required(VERSION 3.10)\nproject(refused C)\n"
                "find_package(libmaas 1.0 REQUIRED)\n")
    r = sh([cmake, "-S", src, "-B", os.path.join(work, "refused-build"),
            "-DCMAKE_PREFIX_PATH=" + inst.prefix], check=False)
    if r.returncode == 0 or "libmaas" not in r.stderr:
        raise Failure("find_package(libmaas 1.0) was not refused: exit %d\n%s"
                      % (r.returncode, r.stderr))
    return got


def test_cmake_static(inst, work):
    return cmake_find(inst, work, True)


# ---- main -------------------------------------------------------------------


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: test_install.py SOURCE_ROOT [SUBTEST...]\n")
        return 2
    root = os.path.realpath(argv[1])
    wanted = argv[2:] or SUBTESTS
    for w in wanted:
        if w not in SUBTESTS:
            sys.stderr.write("unknown subtest %s (%s)\n" % (w, ", ".join(SUBTESTS)))
            return 2
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="maas-install-"))
    if tmp.startswith(root + os.sep):
        sys.stderr.write("the temporary directory %s is inside the source tree\n" % tmp)
        return 2
    results = {}
    texts = {}
    emu = None
    try:
        try:
            inst = Install(root, tmp)
        except (Failure, subprocess.TimeoutExpired) as e:
            print("install: FAIL: %s" % e)
            print("0 passed, %d failed" % len(wanted))
            return 1
        os.environ["MAAS_EMULATOR"] = os.path.join(inst.bindir, "maas-emulator")
        emu = Emulator()
        inst.emu = emu
        for name in wanted:
            work = os.path.join(tmp, name)
            os.makedirs(work)
            print("== %s" % name, flush=True)
            try:
                got = globals()["test_" + name](inst, work)
                if got:
                    exe, extra = got
                    env = emu.env()
                    env.pop("LD_LIBRARY_PATH", None)  # that of the build under test
                    env.update(extra)
                    r = subprocess.run([exe], capture_output=True, text=True, env=env,
                                       cwd=work, timeout=120)
                    if r.returncode != 0 or not r.stdout.strip():
                        raise Failure("%s exited with %d, stdout %r, stderr %r"
                                      % (exe, r.returncode, r.stdout, r.stderr))
                    print(r.stderr.strip())
                    texts[name] = r.stdout
                results[name] = "ok"
            except Skip as e:
                results[name] = "SKIP (%s)" % e
            except (Failure, subprocess.TimeoutExpired) as e:
                results[name] = "FAIL"
                print("%s: FAIL: %s" % (name, e))
            print("%s: %s" % (name, results[name]), flush=True)
        # The same request streams the same text, whoever built the program.
        if len(set(texts.values())) > 1:
            for name, text in texts.items():
                print("%s printed %r" % (name, text))
            first = next(iter(texts))
            for name in texts:
                if texts[name] != texts[first] and results[name] == "ok":
                    results[name] = "FAIL"
    finally:
        if emu is not None and emu.stop() != 0:
            print("maas-emulator did not shut down cleanly")
            results["emulator"] = "FAIL"
        if os.environ.get("MAAS_INSTALL_KEEP"):
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    passed = sum(1 for r in results.values() if r == "ok")
    failed = sum(1 for r in results.values() if r == "FAIL")
    skipped = sum(1 for r in results.values() if r.startswith("SKIP"))
    for name, r in results.items():
        print("%-17s %s" % (name, r))
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    if failed:
        return 1
    return 77 if skipped else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
