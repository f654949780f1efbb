#!/usr/bin/env python3
"""Writes two apps with dependencies for bench/build.sh, built here with no network:

  DEST/python-deps  the python-app fixture plus PACKAGES wheels under wheels/, listed in
                    requirements.txt, as an app whose dependencies were vendored for an offline
                    server
  DEST/node-deps    the node-app fixture plus PACKAGES npm tarballs under vendor/, as `file:`
                    dependencies with a package-lock.json

Each package holds MODULES modules of generated code, about 4 KiB each, so the defaults (30
packages of 40 modules, about 5 MiB of source per app) are the size of a Flask + SQLAlchemy or
an Express + a few middlewares dependency set.

  bench/deps_apps.py DEST [PACKAGES] [MODULES]
"""

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_source(pkg, mod, comment):
    """About 4 KiB of plain, varied code."""
    lines = [f"{comment} {pkg}.{mod}: generated for Slipway's build benchmark"]
    for i in range(24):
        if comment == "#":
            lines += [
                f"def f_{mod}_{i}(x, y={i}):",
                f"    total = x * {i + 1} + y",
                f"    return [total + k for k in range({i % 7 + 1})]",
                "",
            ]
        else:
            lines += [
                f"exports.f_{mod}_{i} = function (x, y = {i}) {{",
                f"  const total = x * {i + 1} + y;",
                f"  return Array.from({{ length: {i % 7 + 1} }}, (_, k) => total + k);",
                "};",
            ]
    return "\n".join(lines) + "\n"


def write_wheel(dest, pkg, modules):
    name = f"{pkg}-1.0-py3-none-any.whl"
    files = {f"{pkg}/__init__.py": f"from .m0 import *\n"}
    for m in range(modules):
        files[f"{pkg}/m{m}.py"] = module_source(pkg, f"m{m}", "#")
    info = f"{pkg}-1.0.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 1.0\n"
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: slipway-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(os.path.join(dest, name), "w", zipfile.ZIP_DEFLATED) as z:
        for path, text in files.items():
            z.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), text)
    return name


def write_npm_tarball(dest, pkg, modules):
    name = f"{pkg}-1.0.0.tgz"
    files = {
        "package/package.json": json.dumps({"name": pkg, "version": "1.0.0", "main": "index.js"}),
        "package/index.js": "".join(
            f'exports.m{m} = require("./lib/m{m}");\n' for m in range(modules)
        ),
    }
    for m in range(modules):
        files[f"package/lib/m{m}.js"] = module_source(pkg, f"m{m}", "//")
    with tarfile.open(os.path.join(dest, name), "w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1577836800
            tar.addfile(info, io.BytesIO(data))
    return name


def main():
    dest = sys.argv[1]
    packages = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    modules = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    fixtures = os.path.join(ROOT, "tests", "fixtures")

    py = os.path.join(dest, "python-deps")
    shutil.copytree(os.path.join(fixtures, "python-app"), py)
    os.makedirs(os.path.join(py, "wheels"))
    wheels = [write_wheel(os.path.join(py, "wheels"), f"benchdep{i}", modules) for i in range(packages)]
    with open(os.path.join(py, "requirements.txt"), "w") as f:
        f.writelines(f"./wheels/{w}\n" for w in wheels)

    node = os.path.join(dest, "node-deps")
    shutil.copytree(os.path.join(fixtures, "node-app"), node)
    os.makedirs(os.path.join(node, "vendor"))
    manifest = json.load(open(os.path.join(node, "package.json")))
    manifest["dependencies"] = {}
    for i in range(packages):
        pkg = f"benchdep{i}"
        tgz = write_npm_tarball(os.path.join(node, "vendor"), pkg, modules)
        manifest["dependencies"][pkg] = f"file:vendor/{tgz}"
    with open(os.path.join(node, "package.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    os.remove(os.path.join(node, "package-lock.json"))
    # The lock file, as a developer would commit it; file: tarballs need no registry.
    subprocess.run(
        ["npm", "install", "--package-lock-only", "--offline", "--no-audit", "--no-fund"],
        cwd=node, check=True, stdout=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    main()
