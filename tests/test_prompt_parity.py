"""A newcomer's prompt behaves the same in the CLI and the studio: one table of good and bad prompts
and settings, driven through `avgen generate` and through the studio's request check (and the
dataset's and the pipeline's own readers), must give the same canonical prompt or the same sentence."""
from __future__ import annotations

import json

import pytest

from avgen.api.settings import GenerateSettings
from avgen.cli import main
from avgen.data import make_dataset
from avgen.demo.studio import Studio
from avgen.model.pipeline import load_pipeline
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)

# (what a person types, the canonical prompt, or the sentence both front ends answer with)
PROMPTS = [
    ("3 1 4", "3 1 4", None),
    ("314", "3 1 4", None),
    ("3,1,4", "3 1 4", None),
    (" 3  1 ", "3 1", None),
    ("", "", None),  # the unconditional clip, in both
    ("3 x", None, "the prompt may only hold digits 0-9; 'x' is not one (leave it empty for an unconditional clip)"),
    ("three", None, "the prompt may only hold digits 0-9; 't' is not one (leave it empty for an unconditional clip)"),
    ("1 2 3 4", None, "the prompt has 4 labels; at most 3 fit in a clip"),
    ("3" * 1001, None, "the prompt has 1001 characters; at most 1000 are read"),
]
# (CLI flags, studio settings, the sentence both answer with)
SETTINGS = [
    (["--steps", "0"], {"steps": 0}, "steps must be a whole number from 1 to 200, got 0"),
    (["--steps", "201"], {"steps": 201}, "steps must be a whole number from 1 to 200, got 201"),
    (["--guidance-scale", "21"], {"guidance_scale": 21.0}, "guidance_scale must be a number from 0 to 20, got 21.0"),
    (["--guidance-interval", "0.8", "0.3"], {"guidance_interval": (0.8, 0.3)},
     "guidance_interval must be two noise levels lo <= hi between 0 and 1, got (0.8, 0.3)"),
]


@pytest.fixture(scope="module")
def studio(tiny_weights, tmp_path_factory):  # noqa: F811
    return Studio(tiny_weights, device="cpu", workdir=tmp_path_factory.mktemp("studio"))


def cli_generate(weights, out, *args, prompt="3") -> int:
    """`avgen generate` in this process (one step: the answer, not the clip, is under test)."""
    return main(["generate", prompt, "--weights", str(weights), "--out", str(out), "--steps", "1", "--device", "cpu",
                 *args])


@pytest.mark.parametrize("typed, canonical, message", PROMPTS)
def test_a_prompt_gets_the_same_answer_from_the_cli_and_the_studio(typed, canonical, message, studio, tiny_weights,  # noqa: F811
                                                                   tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    rc = cli_generate(tiny_weights, out, prompt=typed)
    err = capsys.readouterr().err.strip()
    try:
        checked, _, _ = studio.check(GenerateSettings(prompt=typed, steps=1, device="cpu"))
        studio_answer = checked.prompt
    except ValueError as e:
        studio_answer = e
    if message is None:
        assert rc == 0, err
        assert json.loads(out.with_suffix(".json").read_text())["prompt"] == canonical == studio_answer
    else:
        assert rc == 2 and err == f"avgen generate: error: {message}" and not out.exists()
        assert isinstance(studio_answer, ValueError) and str(studio_answer) == message


@pytest.mark.parametrize("typed, canonical, message", PROMPTS)
def test_the_pipeline_and_the_dataset_read_prompts_by_the_same_rule(typed, canonical, message, tiny_weights):  # noqa: F811
    pipe = load_pipeline(tiny_weights, "cpu")
    for read in (lambda t: pipe.parse_prompts(t)[0].text, lambda t: " ".join(shapes_like_digits().parse_prompt(t))):
        if message is None:
            assert read(typed) == canonical
        else:
            with pytest.raises(ValueError) as e:
                read(typed)
            assert str(e.value) == message


def shapes_like_digits():
    """A dataset over the digits (shapes' code path, the digits' vocabulary): datasets parse by the same rule."""
    ds = make_dataset("shapes")
    ds.vocab = tuple("0123456789")
    return ds


@pytest.mark.parametrize("flags, fields, message", SETTINGS)
def test_a_setting_out_of_its_limits_gets_the_same_sentence(flags, fields, message, studio, tiny_weights, tmp_path,  # noqa: F811
                                                            capsys):
    out = tmp_path / "clip.mp4"
    rc = cli_generate(tiny_weights, out, *flags)  # a later --steps wins over the helper's
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and not out.exists()
    with pytest.raises(ValueError) as e:
        studio.check(GenerateSettings(prompt="3", device="cpu", **fields))
    assert str(e.value) == message


def test_an_empty_prompt_makes_the_unconditional_clip_in_both(studio, tiny_weights, tmp_path):  # noqa: F811
    out = tmp_path / "null.mp4"
    assert cli_generate(tiny_weights, out, prompt="") == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["prompt"] == "" and sidecar["settings"]["mode"] == "t2av"
    result = studio.run(GenerateSettings(prompt="", steps=1, device="cpu"))
    assert result.clip.prompt == "" and result.settings.prompt == "" and result.settings.mode == "t2av"
