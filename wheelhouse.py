"""This project's Python packages for a machine without internet: a folder of wheels, made once where
there is a network, installed from that folder on the machine (docs/gpus.md). Standard library only,
so that it runs where nothing of the project can be imported yet.

A GPU box often comes with its own CUDA build of torch (torch 2.11 with CUDA 13, say) and nothing
else. The box's torch is never replaced: the folder holds every other package of requirements.txt
and what they need, pinned to the versions of the environment it is made from, without torch and
its CUDA libraries; torchvision is pinned to the release that goes with the box's torch.

    python wheelhouse.py download --dest wheels --torch 2.11 --python-version 3.12   # where there is a network
    python wheelhouse.py install --wheels wheels        # on the box: a venv over its torch, offline
    python wheelhouse.py python --wheels wheels         # the interpreter to use, installing first if needed
    bash main.sh gpu-check                              # calls `wheelhouse.py python` itself (WHEELS=dir)
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "requirements.txt"
OFFLINE_VENV = ROOT / ".venv-offline"
# What the project imports (the modules of requirements.txt; pytest and submitit are optional here).
MODULES = ("torch", "torchvision", "open_clip", "numpy", "tqdm", "yaml", "PIL", "scipy", "h5py", "pyautoattack",
           "matplotlib")
# Never in the folder: the box's own torch and what only torch needs (its CUDA libraries, Triton).
KEEP_THE_BOXS = re.compile(r"^(torch|nvidia-.*|triton|pytorch-triton.*|cuda-.*)$")
# Not needed by gpu-check or a run; the rest of requirements.txt is.
OPTIONAL = {"pytest", "submitit"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path = REQUIREMENTS) -> list[str]:
    """The package names of a requirements file (comments and version ranges dropped)."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(canonical(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]))
    return names


def _marker_ok(requirement: str) -> bool:
    """Whether a Requires-Dist line applies to a plain install (no extras) on this interpreter."""
    if ";" not in requirement:
        return True
    marker = requirement.split(";", 1)[1]
    if "extra" in marker:
        return False
    try:
        from packaging.markers import Marker
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.markers import Marker
    return Marker(marker).evaluate()


def closure(names: list[str]) -> dict[str, str]:
    """{package: installed version} of `names` and everything they need, read from this environment's
    metadata, without the box's own packages (KEEP_THE_BOXS)."""
    seen: dict[str, str] = {}
    todo = [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen or KEEP_THE_BOXS.match(name):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as e:
            raise SystemExit(f"wheelhouse: {name} is not installed here: make the folder where the project's "
                             f"environment is (pip install -r requirements.txt)") from e
        seen[name] = dist.version
        for req in dist.requires or []:
            if _marker_ok(req):
                todo.append(canonical(re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0]))
    return seen


def torchvision_for(torch_version: str) -> str:
    """torchvision's release line for a torch release: 2.Y -> 0.(Y + 15) (2.3 -> 0.18, 2.11 -> 0.26)."""
    major, minor = (int(v) for v in torch_version.split(".")[:2])
    if major != 2:
        raise SystemExit(f"wheelhouse: torch {torch_version}: only torch 2.x is supported")
    return f"0.{minor + 15}.*"


def download(dest: Path, box_torch: str | None = None, python_version: str | None = None,
             platform: str | None = None) -> list[str]:
    """`pip download` every package the project needs but torch into `dest`, for the box's torch, Python
    and platform (default: this machine's). Returns the pins. Needs a network."""
    names = [n for n in requirement_names() if n not in OPTIONAL]
    pins = closure([n for n in names if n != "torchvision"])
    pins.pop("torchvision", None)
    box_torch = box_torch or metadata.version("torch")
    specs = [f"{n}=={v}" for n, v in sorted(pins.items())] + [f"torchvision=={torchvision_for(box_torch)}"]
    target = []
    if python_version:
        target += ["--python-version", python_version, "--implementation", "cp"]
    if platform:
        target += ["--platform", platform]
    dest.mkdir(parents=True, exist_ok=True)
    # --no-deps: the pins are the whole closure already, and torchvision's own requirement (torch) is the box's
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), *target, *specs]
    print("wheelhouse:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    (dest / "requirements-offline.txt").write_text("\n".join(specs) + "\n")
    return specs


def missing_modules(python: str, modules=MODULES) -> list[str]:
    """The modules `python` cannot import."""
    code = ("import importlib.util, sys\n"
            f"print(' '.join(m for m in {list(modules)!r} if importlib.util.find_spec(m) is None))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return list(modules)
    return out.stdout.split()


def install(wheels: Path, venv: Path = OFFLINE_VENV, python: str = sys.executable, modules=MODULES,
            requirements: Path | None = None) -> str:
    """A venv over `python`'s packages (its torch stays the box's) with what is missing installed from the
    folder `wheels`, offline (`pip install --no-index --find-links`). Returns the venv's python."""
    if "torch" in modules and "torch" in missing_modules(python, ["torch"]):
        raise SystemExit(f"wheelhouse: {python} has no torch. Install the box's CUDA build of torch first "
                         f"(https://pytorch.org/get-started/locally/), then run this again")
    requirements = requirements or wheels / "requirements-offline.txt"
    if not wheels.is_dir() or not requirements.is_file():
        raise SystemExit(f"wheelhouse: no wheel folder at {wheels} (or no {requirements.name} in it). Make it where "
                         f"there is a network: python wheelhouse.py download --dest {wheels.name} --torch <the box's "
                         f"torch version> --python-version <the box's python, e.g. 3.12>; then copy it here")
    venv_python = venv / "bin" / "python"
    if not venv_python.exists():
        made = subprocess.run([python, "-m", "venv", "--system-site-packages", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            raise SystemExit(f"wheelhouse: could not create {venv} ({made.stderr.strip()[-300:]}). On Debian/Ubuntu: "
                             f"apt install python3-venv; or install into this python: {python} -m pip install "
                             f"--no-index --find-links {wheels} -r {requirements}")
        see_packages_of(python, str(venv_python))
    cmd = [str(venv_python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
           "-r", str(requirements)]
    print("wheelhouse:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    still = missing_modules(str(venv_python), modules)
    if still:
        raise SystemExit(f"wheelhouse: installed from {wheels}, but {venv_python} still cannot import {', '.join(still)}")
    return str(venv_python)


def _site_dirs(python: str) -> list[str]:
    code = ("import json, site, sysconfig; p = sysconfig.get_paths()\n"
            "print(json.dumps(list(dict.fromkeys([p['purelib'], p['platlib'], *site.getsitepackages()]))))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def see_packages_of(python: str, venv_python: str) -> None:
    """Let the venv see `python`'s packages after its own: `--system-site-packages` shows only the base
    interpreter's, and the box's torch may live in a venv or conda environment of its own."""
    own = _site_dirs(venv_python)[0]
    (Path(own) / "box-site-packages.pth").write_text("\n".join(_site_dirs(python)) + "\n")


def candidates() -> list[str]:
    """Interpreters that may hold the project's packages, in the order main.sh prefers them."""
    out = []
    if os.environ.get("VIRTUAL_ENV"):
        out.append(str(Path(os.environ["VIRTUAL_ENV"]) / "bin" / "python"))
    out += [str(ROOT / ".venv" / "bin" / "python"), str(OFFLINE_VENV / "bin" / "python"), sys.executable]
    return [p for p in dict.fromkeys(out) if Path(p).exists()]


def ready_python(wheels: Path) -> str:
    """The first interpreter with every module; else the offline venv, installed from `wheels`."""
    for python in candidates():
        if not missing_modules(python):
            return python
    print(f"wheelhouse: missing {', '.join(missing_modules(sys.executable))}: installing offline from {wheels}",
          file=sys.stderr, flush=True)
    return install(wheels)


def get_args_parser() -> argparse.ArgumentParser:
    # Standard library only (it runs before the packages exist), so argparse's own formatter for the defaults.
    shown = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter, "allow_abbrev": False}
    p = argparse.ArgumentParser("wheelhouse: this project's packages from a folder of wheels, offline", **shown)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", **shown,
                       help="pip download every package but torch into a folder (needs a network)")
    d.add_argument("--dest", default="wheels", help="the folder the wheels go into")
    d.add_argument("--torch", default=None, help="the box's torch version, e.g. 2.11 (default: this machine's)")
    d.add_argument("--python-version", default=None, help="the box's python, e.g. 3.12 (default: this one's)")
    d.add_argument("--platform", default=None, help="the box's wheel platform, e.g. manylinux_2_28_x86_64")
    i = sub.add_parser("install", **shown, help="a venv over this python's torch, the rest installed from the folder")
    i.add_argument("--wheels", default="wheels", help="the folder of wheels (wheelhouse.py download)")
    w = sub.add_parser("python", **shown, help="print the interpreter to use, installing from the folder if needed")
    w.add_argument("--wheels", default="wheels", help="the folder of wheels (wheelhouse.py download)")
    return p


def main(argv=None) -> int:
    a = get_args_parser().parse_args(argv)
    if a.command == "download":
        specs = download(Path(a.dest), a.torch, a.python_version, a.platform)
        print(f"wheelhouse: {len(specs)} packages in {a.dest}; copy the folder to the box, then: bash main.sh gpu-check "
              f"(WHEELS={a.dest})")
    elif a.command == "install":
        print(install(Path(a.wheels)))
    else:
        print(ready_python(Path(a.wheels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
