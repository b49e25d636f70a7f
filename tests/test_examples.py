"""Every example runs with --quick, exits 0 and writes its figure (the distributed one
through torchrun with two processes)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["spiral", "circle", "rotations", "joint_digits", "guided_digits", "custom_process",
            "protein_frames"]


def _run_and_check_png(command, out: Path, png: str):
    # one thread per process: the examples' small models gain nothing from more
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, (f"{' '.join(command)} exited with {result.returncode}\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    figure = out / png
    assert figure.is_file(), f"{figure} was not written; output:\n{result.stdout[-3000:]}"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{figure} is not a PNG"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_quick_and_writes_png(name, tmp_path):
    command = [sys.executable, f"examples/{name}.py", "--quick", "--out", str(tmp_path)]
    _run_and_check_png(command, tmp_path, f"{name}.png")


def test_distributed_example_runs_on_two_processes(tmp_path):
    # --standalone: a local rendezvous on a port the system picks, free of races
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "examples/distributed_spiral.py", "--quick",
               "--out", str(tmp_path)]
    _run_and_check_png(command, tmp_path, "distributed_spiral.png")
