"""Training: `TrainConfig` presets, the loop (EMA, checkpoints, resume, DDP), and export.

    from avgen.train import preset, train, export_run
    result = train(preset("shapes-cpu"), "runs/shapes")          # or `avgen train --preset shapes-cpu ...`
    export_run("runs/shapes", "weights/shapes")                  # or `avgen export runs/shapes --out ...`
"""
from avgen.train.config import TRAIN_PRESETS, TrainConfig, lr_factor, preset
from avgen.train.export import ExportReport, export_run
from avgen.train.loop import TrainResult, read_run_config, train

__all__ = ["TRAIN_PRESETS", "TrainConfig", "TrainResult", "ExportReport", "export_run", "lr_factor", "preset",
           "read_run_config", "train"]
