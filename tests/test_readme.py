"""The README's Python API section runs as written."""
import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_runs(tmp_path, monkeypatch):
    code = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    script = tmp_path / "readme_api.py"
    script.write_text(code)
    monkeypatch.chdir(tmp_path)                 # it saves a model folder
    ns = runpy.run_path(str(script))
    assert ns["x"].shape == (2, 4, 32, 32) and ns["nats"].shape == (2,)
    assert (tmp_path / "my-flow" / "model.safetensors").exists()
