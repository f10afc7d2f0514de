"""The package layout's one rule: imports point one way (nn -> models -> io -> factory -> tasks -> train /
evaluate / predict -> cli). Checked in a fresh interpreter per package, so nothing else has imported them first."""
import subprocess
import sys

import pytest

LOWER = {"swinkit.nn": ("swinkit.models", "swinkit.io", "swinkit.tasks", "swinkit.train", "swinkit.data",
                        "swinkit.factory", "swinkit.tools"),
         "swinkit.models": ("swinkit.io", "swinkit.tasks", "swinkit.train", "swinkit.data", "swinkit.factory",
                            "swinkit.tools"),
         "swinkit.io": ("swinkit.tasks", "swinkit.train", "swinkit.data", "swinkit.factory", "swinkit.tools")}
MODULES = {"swinkit.nn": ["windows", "attention", "blocks"],
           "swinkit.models": ["swin", "backbone", "heads", "segmentation", "unet", "video", "swinir", "detection", "simmim"],
           "swinkit.io": ["convert", "convert_unet", "convert_video", "convert_swinir", "checkpoint", "detection"]}


@pytest.mark.parametrize("package", list(LOWER))
def test_lower_layers_import_nothing_above_them(package):
    code = (
        "import sys, importlib\n"
        f"sys.modules['swinkit'] = type(sys)('swinkit'); sys.modules['swinkit'].__path__ = [{_package_dir()!r}]\n"
        f"for m in {MODULES[package]!r}: importlib.import_module({package!r} + '.' + m)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('swinkit'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    above = [m for m in out if m.startswith(LOWER[package])]
    assert above == [], f"{package} imports {above}"


def _package_dir() -> str:
    """swinkit's folder, found without running its __init__ (which imports every layer)."""
    import importlib.util

    return str(importlib.util.find_spec("swinkit").submodule_search_locations[0])
