"""The README stays true: the quick start, CI's command, and every streaming.yaml key."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from dataflows.config import DATA_TYPE_KEYS, DataTypeConfig, StreamingConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_config_key_is_documented():
    keys = [k for k in _keys(StreamingConfig) if k != "data_types"]
    keys += [f"data_types.<type>.{k}" for k in DataTypeConfig.model_fields]
    missing = [k for k in keys if f"`{k}`" not in README and f"{k}`" not in README]
    assert not missing, f"README does not document: {missing}"
    for dt in DATA_TYPE_KEYS:
        assert dt in README


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick, re.S)
    assert block
    commands = [line for line in block.group(1).splitlines()
                if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    assert "python -m bytewax.run dataflows.main" in commands[0]
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_every_mode_is_documented():
    from dataflows.config import MODES

    for mode in MODES:
        assert f"`{mode}`" in README
