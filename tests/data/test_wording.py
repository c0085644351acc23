"""Free wording: the wide training vocabulary, the evaluation-only vocabulary that no training
caption uses, the data set's ``wording`` and ``kinema eval --style unseen-words``."""

from __future__ import annotations

import numpy as np
import pytest

from kinema.data.shapes import ALL_COMBOS, ShapesDataset, TEMPLATES
from kinema.data.wording import (
    EVAL_COLOUR_WORDS,
    EVAL_MOTIONS,
    EVAL_SHAPE_PHRASES,
    _SHARED_OK,
    check_vocabularies,
    training_words,
    wide_caption,
    words,
)
from kinema.errors import KinemaError
from kinema.evaluation.judge import EVAL_STYLES, eval_prompts


def test_no_evaluation_word_is_a_training_word():
    check_vocabularies()
    seen = training_words()
    rng = np.random.default_rng(0)
    drawn = set().union(*(words(wide_caption(*ALL_COMBOS[i % 96], rng)) for i in range(5000)))
    assert drawn <= seen  # training_words covers every word a wide caption can draw
    for c, s, m, text in eval_prompts("all", "unseen-words"):
        named = words(text) - seen - _SHARED_OK
        assert named, text  # each evaluation prompt has words no training caption has
        assert words(text) & seen <= {"a", "the", "in", "this", "slowly", "look", "shape", "travels", "coloured"}, text


def test_the_evaluation_vocabulary_names_every_attribute_with_unseen_words():
    for table in (EVAL_COLOUR_WORDS, EVAL_SHAPE_PHRASES, EVAL_MOTIONS):
        for phrases in table.values():
            assert phrases and all(words(p) - training_words() for p in phrases)
    prompts = [text for *_, text in eval_prompts("all", "unseen-words")]
    assert len(set(prompts)) == 96 and "a cherry-coloured orb travels west" in prompts  # the kind of wording


def test_wide_captions_are_many_and_a_pure_function_of_the_draw():
    rng = np.random.default_rng(1)
    captions = {wide_caption("purple", "triangle", "up", rng) for _ in range(400)}
    assert len(captions) > 300
    assert wide_caption("red", "circle", "left", np.random.default_rng(5)) == wide_caption("red", "circle", "left", np.random.default_rng(5))


def test_the_data_set_draws_wide_wording_on_request_and_keeps_the_clips():
    plain = ShapesDataset(length=200, seed=3)
    wide = ShapesDataset(length=200, seed=3, wording="wide")
    for i in range(200):
        a, b = plain.spec(i), wide.spec(i)
        assert a[0] == b[0]  # the same clips: only the caption's words change
    templated = sum(any(_fits(t, plain.spec(i)[1]) for t in TEMPLATES) for i in range(200))
    assert templated == 200
    assert len({wide.caption(i) for i in range(200)}) > 180
    with pytest.raises(KinemaError, match="unknown wording 'free'"):
        ShapesDataset(wording="free")


def _fits(template: str, caption: str) -> bool:
    head = template.split("{")[0]
    return caption.startswith(head)


def test_eval_styles():
    assert EVAL_STYLES == ("canonical", "reworded", "wide-words", "unseen-words")
    assert eval_prompts("held_out", "wide-words") == eval_prompts("held_out", "wide-words")
    with pytest.raises(KinemaError, match="unknown prompt style 'fancy'"):
        eval_prompts("all", "fancy")


def test_the_training_config_takes_a_wording():
    import yaml

    from kinema.training.config import DataConfig, load_config

    def load_config_dict(path):
        from pathlib import Path

        return yaml.safe_load((Path(__file__).resolve().parents[2] / path).read_text())


    assert DataConfig().wording == "templates"
    with pytest.raises(KinemaError, match="wording"):
        load_config({**load_config_dict("configs/tiny-transformer.yaml"), "data": {"wording": "free"}})
