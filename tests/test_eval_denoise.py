"""Held-out denoising error (avgen/eval/denoise.py): what it measures, that its noise is keyed per clip,
the `val_every` figures a training run logs, and `avgen eval --denoise-error`."""
from __future__ import annotations

import json

import pytest
import torch

from avgen.cli import main as cli
from avgen.data import make_dataset
from avgen.api.training import train
from avgen.eval.denoise import LEVELS, dataset_denoise_error, denoise_error, flat, format_table
from avgen.model.batch import clip_batch
from avgen.model.codec import AVCodec
from avgen.model.weights import load_network
from avgen.train.config import preset
from avgen.train.export import export_run


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny shapes model trained 2 steps (with validation every step), exported."""
    root = tmp_path_factory.mktemp("denoise")
    train(preset("tiny", {"steps": 2, "val_every": 1, "val_clips": 3}), root / "run", device="cpu", progress_bar=False)
    export_run(root / "run", root / "weights")
    return root


@pytest.fixture(scope="module")
def model(weights):
    return load_network(weights / "weights").eval()


def batch_of(model, n: int, first: int = 0):
    ds = make_dataset("shapes", split="test", seed=0, spec=AVCodec.from_config(model.config).spec)
    codec = AVCodec.from_config(model.config)
    return codec, clip_batch([ds[first + i] for i in range(n)], model.config.vocab, model.config.max_events, 1,
                             ds.parse_prompt)


class Oracle(torch.nn.Module):
    """Predicts the clean tokens it was built with (or zeros): error 0 (or the tokens' mean square)."""

    def __init__(self, x0, config, zero=False):
        super().__init__()
        self.x0, self.config, self.zero = x0, config, zero
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, video, audio, *args, **kwargs):
        return {m: torch.zeros_like(v) if self.zero else v.clone() for m, v in self.x0.items()}


def test_error_is_the_x0_mean_square_per_modality_and_level(model):
    codec, batch = batch_of(model, 3)
    x0 = codec.encode(batch["frames"], batch["audio"])
    exact = denoise_error(Oracle(x0, model.config), codec, batch, levels=(0.1, 0.9))
    assert all(e == 0 for row in exact.values() for e in row.values())
    blind = denoise_error(Oracle(x0, model.config, zero=True), codec, batch, levels=(0.1, 0.9))
    for m in ("video", "audio"):
        assert blind[m][0.1] == blind[m][0.9] == pytest.approx(float(x0[m].pow(2).mean()), rel=1e-6)
    real = denoise_error(model, codec, batch)
    assert list(real["audio"]) == list(LEVELS) and all(e > 0 for row in real.values() for e in row.values())
    with pytest.raises(ValueError, match="noise levels"):
        denoise_error(model, codec, batch, levels=(0.0, 0.5))


def close(a: dict, b: dict, rel: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(a[m] == pytest.approx(b[m], rel=rel) for m in a)


def test_each_clip_keeps_its_noise_whatever_the_chunks(model):
    codec, batch = batch_of(model, 4)
    whole = denoise_error(model, codec, batch, seed=3)
    assert close(denoise_error(model, codec, batch, seed=3, chunk=3), whole)
    assert not close(denoise_error(model, codec, batch, seed=4), whole)
    first = denoise_error(model, codec, {k: v[:1] for k, v in batch.items()}, seed=3)
    alone = denoise_error(model, codec, batch_of(model, 1)[1], seed=3)
    assert first == alone
    ds = make_dataset("shapes", split="test", seed=0, spec=codec.spec)
    assert close(dataset_denoise_error(model, ds, 4, seed=3, chunk=3), whole)  # rendered 3 clips at a time


def test_training_logs_the_ema_weights_validation_error(weights):
    rows = [json.loads(line) for line in (weights / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_x0_audio@0.3" in r]
    assert [r["step"] for r in val] == [1, 2]
    assert set(flat({"video": {0.3: 1.0}}, "val_x0")) == {"val_x0_video@0.3"}
    assert all(r[k] > 0 for r in val for k in flat({m: dict.fromkeys(LEVELS, 0) for m in ("video", "audio")},
                                                        "val_x0"))
    model = load_network(weights / "weights").eval()
    ds = make_dataset("shapes", split="test", seed=0, spec=AVCodec.from_config(model.config).spec)
    logged = {k: v for k, v in val[-1].items() if k.startswith("val_x0")}  # the exported EMA weights, step 2
    assert logged == pytest.approx(flat(dataset_denoise_error(model, ds, 3), "val_x0"), rel=1e-4)


def test_a_failed_validation_is_logged_and_training_goes_on(tmp_path, monkeypatch):
    import avgen.api.training as training

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (pretend)")

    monkeypatch.setattr(training, "denoise_error", out_of_memory)
    result = train(preset("tiny", {"steps": 2, "val_every": 1}), tmp_path / "run", device="cpu", progress_bar=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 2 and [r["val_error"] for r in rows if "val_error" in r] == \
        ["CUDA out of memory (pretend)"] * 2


def test_cli_prints_the_table_and_writes_json(weights, capsys):
    out = weights / "denoise.json"
    assert cli(["eval", "--dataset", "shapes", "--denoise-error", "--weights", str(weights / "weights"), "--n", "2",
                "--split", "train", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 shapes train clips" in printed and "0.001" in printed
    record = json.loads(out.read_text())
    assert record["levels"] == list(LEVELS) and set(record["x0_error"]) == {"video", "audio"}
    assert format_table({m: {float(k): v for k, v in row.items()} for m, row in record["x0_error"].items()}) in printed
