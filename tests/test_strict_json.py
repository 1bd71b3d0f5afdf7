"""Every JSON avgen writes parses with a strict parser: no NaN or Infinity (RFC 8259 has neither);
an undefined figure is null."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from avgen.cli import main
from avgen.data.clip import Clip
from avgen.data.io import write_mp4
from avgen.util import dumps, json_safe


def strict_load(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_undefined_figures_are_null_at_any_depth():
    doc = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": np.float32("nan"), "e": np.arange(2),
           "f": (np.float64(2.5), None)}
    assert json_safe(doc) == {"a": None, "b": [1.0, None, {"c": None}], "d": None, "e": [0, 1], "f": [2.5, None]}
    assert strict_load(dumps(doc)) == json_safe(doc)
    with pytest.raises(ValueError):  # the strict parser this test uses does refuse NaN
        strict_load('{"a": NaN}')


def test_eval_json_of_a_clip_without_events_is_strict(tmp_path, capsys):
    """A silent, blank clip has no onsets: its offset and F1 are undefined, and the file still parses."""
    blank = Clip(np.zeros((48, 32, 32, 1), np.float32), np.zeros(24000, np.float32), 16, 8000)
    path = write_mp4(blank, tmp_path / "blank.mp4")
    out = tmp_path / "eval.json"
    assert main(["eval", str(path), "--no-judges", "--json", str(out), "--no-plots"]) == 0
    text = out.read_text()
    doc = strict_load(text)
    record = doc["clips"][0]
    assert record["av_offset_ms"] is None and record["onset_f1"] is None  # undefined, not NaN
    assert "NaN" not in text and "Infinity" not in text
