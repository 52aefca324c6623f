"""The package, its tests and launch files keep the style rules of setup.cfg's [flake8] section
(pycodestyle and pyflakes, 99 columns), as ROS 2 Python packages check with ament_flake8."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_flake8_is_clean():
    targets = ["spatialoc_ros", "test", "launch", "setup.py"]
    out = subprocess.run([sys.executable, "-m", "flake8", *targets], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    problems = out.stdout.strip().splitlines()
    assert out.returncode == 0 and not problems, (
        f"{len(problems)} style problems (flake8, setup.cfg):\n"
        + "\n".join(problems[:50]) + out.stderr)
