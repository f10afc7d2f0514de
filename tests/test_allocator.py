"""swinkit.utils.allocator: a tuned process reuses freed memory instead of page-faulting it afresh."""
import os
import platform
import subprocess
import sys

import pytest

from swinkit.utils import allocator
from swinkit.cli import main

SCRIPT = """
import resource, torch, swinkit
from swinkit.utils.allocator import tune_unless_disabled
changed = tune_unless_disabled()
torch.manual_seed(0)
model = swinkit.create_model("swin_t", embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], num_classes=10)
x, opt = torch.randn(24, 3, 224, 224), torch.optim.AdamW(model.parameters())  # 38 MB MLP hidden layer
def step():
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad()
for _ in range(5):  # the heap settles
    step()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(changed, sorted(faults)[2])  # the median step: the heap may still grow once or twice
"""


def _run(choice: str) -> tuple[str, int]:
    env = dict(os.environ, SWINKIT_ALLOCATOR=choice)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    changed, faults = out.stdout.split()
    return changed, int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_training_steps_reuse_memory_instead_of_page_faulting_it():
    tuned, system = _run("tuned"), _run("system")
    assert tuned[0] == "True" and system[0] == "False"
    # steps whose largest blocks (38 MB) glibc always maps afresh: with the tuned heap, almost no page faults
    assert tuned[1] < 256  # under 1 MB of 4 KiB pages in the median step
    assert system[1] > 10 * max(tuned[1], 1)


def test_unknown_setting_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("SWINKIT_ALLOCATOR", "fast")
    with pytest.raises(ValueError, match="SWINKIT_ALLOCATOR must be 'tuned' or 'system', got 'fast'"):
        allocator.tune_unless_disabled()
    with pytest.raises(SystemExit):  # every command tunes (or refuses) before it runs
        main(["models"])
    assert "SWINKIT_ALLOCATOR must be 'tuned' or 'system', got 'fast'" in capsys.readouterr().err
