"""The edge install stays light: no scikit-learn, skl2onnx or pyspark on a device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("sklearn", "skl2onnx", "pyspark", "onnx.", "scikit-learn")


def test_the_base_dependencies_exclude_training_and_spark_packages() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [d.split(";")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower() for d in deps]
    assert not {"scikit-learn", "skl2onnx", "pyspark", "onnx", "pyarrow"} & set(names)
    assert {"numpy", "onnxruntime", "paho-mqtt", "azure-iot-device"} <= set(names)


def test_edge_modules_import_without_training_packages() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('sklearn', 'skl2onnx', 'pyspark', 'onnx'):\n"
        "            raise ImportError('blocked on the edge: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import contracts, models, models.bundle, models.scorer, models.registry, models.signing\n"
        "import simulators, simulators.publish, edge_agent.scoring\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
