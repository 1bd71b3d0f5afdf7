"""The library API the command line and the studio share, above the model, training and evaluation:

    settings.py   the generation settings: one table of limits and help, one check
    generate.py   weights -> pipeline -> clips (`generate`)
    records.py    what a generated clip is saved with: mp4 + a JSON sidecar that reproduces it
    evaluate.py   clips generated for the evaluation suite (`avgen eval --generate`)
    training.py   training with sample clips and validation as callbacks (`avgen train`)
    postfilter.py fitting the audio postfilter for a set of weights (`avgen postfilter`)

Nothing is imported here, so that `avgen.api.settings` stays light (the command line's parsers).
"""
