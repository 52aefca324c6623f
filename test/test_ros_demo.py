"""`make demo`'s main job on the tiny map.

A node process answers a speech-to-text stand-in over DDS.
"""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_gets_every_query_answered_and_draws_them(tiny_dataset, tiny_weights, ros_env,
                                                       tmp_path):
    out = tmp_path / "demo.png"
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "config" / "localize.yaml").read_text().replace(
        'cache_dir: ""', f'cache_dir: "{tiny_weights / "cache"}"'))
    proc = subprocess.run(
        [sys.executable, "-m", "spatialoc_ros.ros.demo", "--map", str(tiny_dataset),
         "--weights", str(tiny_weights),
         "--params-file", str(params), "--queries", "3", "--out", str(out),
         "--domain-id", ros_env["ROS_DOMAIN_ID"], "--startup-timeout", "300"],
        env=ros_env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "3/3 queries answered" in proc.stdout
    assert "as 3 utterances" in proc.stdout  # the second query arrives in pieces
    assert proc.stdout.count("truth x") == 3 and "latency" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
