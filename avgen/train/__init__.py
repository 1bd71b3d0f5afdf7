"""Training: `TrainConfig` presets, the loop (EMA, checkpoints, resume, DDP), and export.

    from avgen.train import preset, train, export_run
    result = train(preset("shapes-cpu"), "runs/shapes")          # the loop alone (no sample clips)
    export_run("runs/shapes", "weights/shapes")                  # or `avgen export runs/shapes --out ...`

`avgen train` runs `avgen.api.training.train`: the same loop with sample clips scored by the
evaluation suite and held-out validation as callbacks (training never imports evaluation).
"""
from avgen.train.config import TRAIN_PRESETS, TrainConfig, lr_factor, preset
from avgen.train.export import ExportReport, export_run
from avgen.train.loop import TrainResult, train
from avgen.train.record import read_run_config

__all__ = ["TRAIN_PRESETS", "TrainConfig", "TrainResult", "ExportReport", "export_run", "lr_factor", "preset",
           "read_run_config", "train"]
