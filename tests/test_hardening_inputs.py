"""Bad input, property-based: the prompt parsers and every argument check either return a canonical,
in-range value or raise ValueError with one short line; never another exception."""
from __future__ import annotations

import argparse
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from avgen.api.settings import SETTINGS, SettingError
from avgen.data.prompt import PromptError, Vocabulary

DIGITS = tuple("0123456789")
WORDS = ("circle", "square", "tri")
STEPS, GUIDANCE, SEED, SAMPLER = (SETTINGS[k] for k in ("steps", "guidance_scale", "seed", "sampler"))


def parse_prompt(text, vocab, max_events) -> str:
    """The one prompt rule (CLI, studio, datasets, pipeline), as the canonical text."""
    return Vocabulary(vocab, max_events).parse(text).text
# no example database in the work tree; each test is a few hundred cases in about a second
FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Anything a browser, an API caller or a script could send for one field.
ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10 ** 5000), max_value=10 ** 5000),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(width=16), st.text(), st.binary(max_size=20),
    st.decimals(allow_nan=True), st.fractions(), st.complex_numbers(),
    st.lists(st.integers(), max_size=3), st.sampled_from([np.float32("nan"), np.int64(7), np.float64(2.0),
                                                          np.bool_(True), np.array([1, 2]), np.array([[1.0]])]))
# Text people type: digits, separators, other scripts' digits, control characters, emoji.
PROMPTISH = st.lists(st.sampled_from(list("0123456789 ,\t\n") + ["３", "٣", "\u2028", "\x00", "x", "🙂",
                                                                   "circle", "square", "tri", " "]),
                     max_size=20).map("".join)


def one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message and len(message) <= 300, repr(message)


# ----------------------------------------------------------------------------- the prompt parser
@FAST
@given(text=st.one_of(st.text(), PROMPTISH, ANYTHING), vocab=st.sampled_from([DIGITS, WORDS]),
       max_events=st.integers(1, 5))
@example(text="1" * 5000, vocab=DIGITS, max_events=3)
@example(text="3" * 1001, vocab=DIGITS, max_events=3)
def test_prompt_parser_gives_a_canonical_prompt_or_one_line(text, vocab, max_events):
    try:
        canonical = parse_prompt(text, vocab, max_events)
    except PromptError as e:
        one_line(str(e))
        return
    labels = canonical.split()
    assert all(w in vocab for w in labels) and len(labels) <= max_events
    assert canonical == " ".join(labels)  # single spaces, no padding
    assert parse_prompt(canonical, vocab, max_events) == canonical  # a fixed point


@FAST
@given(text=st.one_of(st.text(), PROMPTISH))
def test_what_the_studio_accepts_the_pipeline_accepts_and_nothing_else_crashes_it(text, tiny_pipe):
    """The pipeline's own parser (avgen generate, the library): labels or ValueError, and every prompt
    the studio canonicalises is one it takes as is."""
    try:
        labels = tiny_pipe.parse_prompts(text)[0].labels
    except ValueError as e:
        one_line(str(e))
    else:
        assert all(w in tiny_pipe.vocab for w in labels) and len(labels) <= 3
    try:
        canonical = parse_prompt(text, tiny_pipe.vocab, 3)
    except PromptError:
        return
    assert [p.text for p in tiny_pipe.parse_prompts(canonical)] == [canonical]


@pytest.fixture(scope="module")
def tiny_pipe():
    from avgen.data.clip import ClipSpec
    from avgen.model.pipeline import AVGenPipeline
    from avgen.model.transformer import AVDiT

    return AVGenPipeline.from_transformer(AVDiT.from_preset("AVDiT-T", ClipSpec(), DIGITS, 3))


# ----------------------------------------------------------------------------- the settings table's checks
@FAST
@given(value=ANYTHING)
@example(value=10 ** 5000)
@example(value=float("nan"))
@example(value="25")
@example(value=Decimal("25"))
@example(value=Fraction(50, 2))
def test_steps_are_a_whole_number_in_range_or_one_line(value):
    try:
        n = STEPS.check(value)
    except SettingError as e:
        one_line(str(e))
        return
    if value is None:  # the sampler's own default, resolved by GenerateSettings.check
        assert n is None
        return
    assert type(n) is int and STEPS.lo <= n <= STEPS.hi
    assert n == value and not isinstance(value, (bool, str))


@FAST
@given(value=ANYTHING)
@example(value=10 ** 400)  # float() of it overflows
@example(value=-0.0)
@example(value=np.float32("inf"))
def test_guidance_scales_are_finite_and_in_range_or_one_line(value):
    try:
        g = GUIDANCE.check(value)
    except SettingError as e:
        one_line(str(e))
        assert str(e).startswith("guidance_scale must be a number from 0 to 20")
        return
    assert type(g) is float and math.isfinite(g) and 0.0 <= g <= GUIDANCE.hi


@FAST
@given(value=ANYTHING)
@example(value=2 ** 63)
@example(value=2 ** 63 - 1)
@example(value=-1)
@example(value=1e300)
def test_seeds_are_whole_and_64_bit_or_one_line(value):
    try:
        seed = SEED.check(value)
    except SettingError as e:
        one_line(str(e))
        return
    import torch

    assert type(seed) is int and 0 <= seed < 2 ** 63
    torch.Generator().manual_seed(seed)  # what the seed is for takes it


@FAST
@given(value=ANYTHING)
@example(value=np.array(["euler"]))
def test_choices_are_one_of_the_offered_strings_or_one_line(value):
    choices = ("euler", "heun", "dpm++", "fast")
    try:
        assert SAMPLER.check(value) in choices
    except SettingError as e:
        one_line(str(e))


def test_the_messages_say_what_was_wrong():
    with pytest.raises(SettingError, match=r"got a number of about 5001 digits"):
        STEPS.check(10 ** 5000)
    with pytest.raises(PromptError, match=r"the prompt must be text \(labels such as '3 1 4'\), got int"):
        parse_prompt(314, DIGITS, 3)
    with pytest.raises(PromptError, match=r"the prompt has 1001 characters; at most 1000"):
        parse_prompt("3" * 1001, DIGITS, 3)
    with pytest.raises(PromptError, match=r"'３' is not one"):  # a full-width digit is not a digit here
        parse_prompt("３", DIGITS, 3)
    with pytest.raises(SettingError, match=r"got array\(\[\[1\., 2\.\], \[3\., 4\.\]\]\)"):  # one line
        SEED.check(np.array([[1.0, 2.0], [3.0, 4.0]]))


# ----------------------------------------------------------------------------- the command line's numbers
@FAST
@given(text=st.one_of(st.text(max_size=50), st.from_regex(r"\A[-+]?[0-9_]{0,40}(\.[0-9]*)?(e[-+]?[0-9]{1,4})?\Z"),
                      st.sampled_from(["nan", "-nan", "inf", "-inf", "Infinity", "1e309", "0x10", "1_000",
                                       "٣", "３", " 7 ", "", "-0", "9" * 31, "1" * 5000])))
def test_cli_numbers_parse_in_range_or_give_one_line(text):
    from avgen.cli import number, whole

    kinds = [(whole(1, 1000), int, (1, 1000)), (whole(0, 2 ** 63 - 1), int, (0, 2 ** 63 - 1)),
             (number(0.0, 100.0), float, (0.0, 100.0)), (number(0.0, 60.0, above=True), float, (0.0, 60.0))]
    for parse, kind, (lo, hi) in kinds:
        try:
            value = parse(text)
        except argparse.ArgumentTypeError as e:
            one_line(str(e))
            continue
        assert type(value) is kind and lo <= value <= hi and math.isfinite(value)


@FAST
@given(flag=st.sampled_from(["--seed", "--steps", "--guidance-scale", "--audio-guidance-scale", "--modality-scale",
                             "--duration", "--num-clips", "--sampler", "--device"]),
       text=st.one_of(st.text(max_size=40), st.sampled_from(["nan", "inf", "-1", "0", "1e400", "2.5", "9" * 60,
                                                            "ddim", "tpu", "－1"])))
def test_generate_flags_parse_or_exit_2_with_one_line(flag, text):
    """Through argparse itself (nothing runs): a value is taken, or exit 2 with one line on stderr."""
    import contextlib
    import io

    from avgen.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(["generate", "3", "--out", "x.mp4", f"{flag}={text}"])
        except SystemExit as e:
            assert e.code == 2
            lines = err.getvalue().splitlines()
            assert len(lines) == 1 and lines[0].startswith("avgen generate: error: argument"), lines
            return
    value = getattr(args, flag[2:].replace("-", "_"))
    assert value is not None and (isinstance(value, str) or math.isfinite(value))
