"""wheelhouse.py: the project's packages installed offline from a folder of wheels, over the machine's own
torch (what `bash main.sh gpu-check` does on a GPU box that has torch and CUDA but not open_clip).

    python -m pytest -q tests/test_wheelhouse.py
"""
import base64
import hashlib
import subprocess
import sys
import zipfile

import pytest

import wheelhouse


def make_wheel(folder, name="demo_offline_pkg", version="1.0"):
    """A minimal pure-Python wheel, written by hand (no build tools, no network)."""
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                   "Tag: py3-none-any\n"}

    def digest(text):
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},{digest(text)},{len(text.encode())}\n" for path, text in files.items())
    files[f"{name}-{version}.dist-info/RECORD"] = record + f"{name}-{version}.dist-info/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
    return path


def test_the_folder_holds_everything_but_the_boxs_torch():
    pins = wheelhouse.closure(["open-clip-torch", "matplotlib"])
    assert {"open-clip-torch", "ftfy", "regex", "huggingface-hub", "timm", "safetensors", "matplotlib"} <= set(pins)
    assert not [n for n in pins if wheelhouse.KEEP_THE_BOXS.match(n)]          # no torch, CUDA libraries, Triton
    assert "torch" in wheelhouse.requirement_names() and "pytest" in wheelhouse.OPTIONAL
    assert wheelhouse.torchvision_for("2.11.0+cu130") == "0.26.*" and wheelhouse.torchvision_for("2.14.1") == "0.29.*"


def test_offline_install_over_the_machines_torch(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    (wheels / "requirements-offline.txt").write_text("demo_offline_pkg==1.0\n")
    python = wheelhouse.install(wheels, venv=tmp_path / "venv", modules=("demo_offline_pkg", "torch"))
    # the new package from the folder, torch from this interpreter's environment (not copied, not downloaded)
    out = subprocess.run([python, "-c", "import demo_offline_pkg, torch; print(demo_offline_pkg.VERSION, torch.__file__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "1.0" and not out[1].startswith(str(tmp_path))
    assert wheelhouse.missing_modules(python, ["demo_offline_pkg", "torch"]) == []


def test_without_a_folder_it_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit, match="wheelhouse.py download --dest"):
        wheelhouse.install(tmp_path / "nowhere", venv=tmp_path / "venv")
    assert wheelhouse.ready_python(tmp_path / "nowhere") in wheelhouse.candidates()   # this one has everything
    assert wheelhouse.missing_modules(sys.executable, ["no_such_module_here", "json"]) == ["no_such_module_here"]
