"""The evaluation suite in one namespace: video files, dataset controls or generated clips -> per-clip
records, a summary with bootstrap 95% intervals, a terminal table, strict JSON and PNG plots.

    analysis.py  one clip's measurements (sync, events, digits read by the judges) and the summary
    controls.py  real clips rendered and altered (shift, swap, scatter, corrupt, codec, re-noise)
    report.py    files to evaluate, tables, JSON, plots

Dataset controls and generated clips are first written to mp4, so the ceiling, the floors and a model
are measured through the same codec and reader.
"""
from avgen.eval.analysis import (MEDIA, POOLED, SCALARS, Analysis, EvalConfig, Item, Report, Truth, analyse, evaluate,
                                 frechet_summary, judge_can_read, load_signal, prompt_scores, sequence_score, summarise)
from avgen.eval.controls import (Control, codec_clip, codec_of, control_clip, corrupt_clip, dataset_items, renoise_model,
                                 renoised_clip, scatter_events, shift_clip)
from avgen.eval.report import (WorkDir, clip_table, config_json, file_items, fmt, format_table, lookup_prompt,
                               plot_envelopes, plot_offsets, pyplot, read_manifest, write_json)

__all__ = ["MEDIA", "POOLED", "SCALARS", "Analysis", "Control", "EvalConfig", "Item", "Report", "Truth", "WorkDir",
           "analyse", "clip_table", "codec_clip", "codec_of", "config_json", "control_clip", "corrupt_clip",
           "dataset_items", "evaluate", "file_items", "fmt", "format_table", "frechet_summary", "judge_can_read",
           "load_signal", "lookup_prompt", "plot_envelopes", "plot_offsets", "prompt_scores", "pyplot",
           "read_manifest", "renoise_model", "renoised_clip", "scatter_events", "sequence_score", "shift_clip",
           "summarise", "write_json"]
