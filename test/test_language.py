"""The language front end: utterances -> canonical hint sentences, and what was understood."""
import numpy as np
import pytest

from spatialoc_ros.core.language import (MAX_CLAUSES, LanguageFrontEnd, canonical_hint,
                                         canonical_sentences, read_texts)
from spatialoc_ros.core.query_text import QueryRejected
from spatialoc_ros.data.constants import CLASS_NAMES, COLOR_NAMES, DIRECTIONS
from spatialoc_ros.data.paraphrase import STYLES, paraphrase_with_facts

FRONT = LanguageFrontEnd()  # the lexicon alone; the encoder's part is tested below


def facts(text, front=FRONT):
    return [(c.direction, c.colour, c.label) for c in front.understand(text).used]


def test_every_template_sentence_reads_back_as_itself():
    # the models were trained on these: the front end must hand them over unchanged
    for d in DIRECTIONS:
        for colour in sorted(set(COLOR_NAMES)):
            for label in CLASS_NAMES:
                s = f"The pose is {d} of a {colour} {label}."
                assert FRONT.understand(s).hints == [s]
    assert len(set(canonical_sentences())) == len(DIRECTIONS) * 8 * len(CLASS_NAMES)


def test_run_on_speech_from_the_issue():
    text = ("um i'm east of the grey building and north of a grey post there's a black traffic "
            "signal to my east and uh a grey road sign is west of me")
    assert facts(text) == [("east", "gray", "building"), ("north", "gray", "pole"),
                           ("west", "black", "traffic light"), ("east", "gray", "traffic sign")]


@pytest.mark.parametrize("text, expected", [
    ("There's a bin to my south.", ("north", None, "trash bin")),
    ("a bin is south of me", ("north", None, "trash bin")),
    ("To my south there is a bin", ("north", None, "trash bin")),
    ("Looking south, I see a bin.", ("north", None, "trash bin")),
    ("I have a bin to my south", ("north", None, "trash bin")),
    ("A bin lies south of where I am.", ("north", None, "trash bin")),
    ("I'm standing on the pavement", ("on-top", None, "sidewalk")),
    ("I am right on top of the grey road", ("on-top", "gray", "road")),
    ("the pavement is under my feet", ("on-top", None, "sidewalk")),
    ("Head east from a light grey street lamp and you'll find me",
     ("east", "bright-gray", "lamp")),
    ("just north of some trees", ("north", None, "vegetation")),
    ("I'm west of the sand-coloured car park", ("west", "beige", "parking")),
    ("we are north of a darkish green hedge", ("north", "dark-green", "vegetation")),
    ("I'm north of a short post", ("north", None, "smallpole")),
])
def test_relations_either_way_round_and_everyday_words(text, expected):
    assert facts(text) == [expected]


def test_heading_relative_and_object_to_object_relations_are_reported_not_guessed():
    u = FRONT.understand("a pole is behind me. The pole is west of the building. "
                         "I'm to the left of a bin")
    assert u.hints == [] and u.understood == 0.0
    reasons = [c.reason for c in u.clauses]
    assert "heading" in reasons[0] and "two objects" in reasons[1] and "heading" in reasons[2]


def test_clauses_naming_nothing_count_against_understanding():
    u = FRONT.understand("I'm north of a grey building and the weather is nice today")
    assert u.hints == ["The pose is north of a gray building."]
    assert len(u.clauses) == 2 and u.understood == pytest.approx(0.5)
    assert "understood 1 of 2" in u.explain()


def test_diagonal_direction_is_used_with_half_confidence():
    u = FRONT.understand("I'm north-east of a lamp post")
    assert u.hints == ["The pose is north of a lamp."] and u.understood == pytest.approx(0.5)


def test_a_conjunction_takes_the_previous_direction():
    assert facts("north of a grey building and a pole") == [("north", "gray", "building"),
                                                            ("north", None, "pole")]


def test_read_texts_bad_input_keeps_the_model_answering_with_nothing_understood():
    for text in ("Je suis au nord d'un bâtiment gris", "banana keyboard sunshine river",
                 "I'm next to a spaceship"):
        r = read_texts(FRONT, [text], max_hints=12)[0]
        assert r.informative == 0.0 and r.hints and not r.understanding.used
    long_clause = "I am north of a " + "very " * 300 + "grey building"
    hints = read_texts(FRONT, [long_clause], 12)[0].hints
    assert hints == ["The pose is north of a gray building."]
    many = " ".join(f"I'm north of a grey building number {i}." for i in range(20))
    r = read_texts(FRONT, [many], max_hints=12)[0]
    assert len(r.hints) == 12 and r.informative == pytest.approx(12 / 20)
    with pytest.raises(QueryRejected) as e:
        read_texts(FRONT, [" ".join(["I'm north of a pole."] * (MAX_CLAUSES + 1))], 12)
    assert e.value.status == "QUERY_TOO_LONG"


@pytest.mark.parametrize("style", [s for s in STYLES if s not in ("speech", "mixed")])
def test_paraphrases_in_training_words_read_back_to_their_facts(style):
    # the generator's own record of the facts it stated is the truth
    rng = np.random.default_rng(3)
    hit = total = 0
    for _ in range(60):
        chosen = [(rng.choice(DIRECTIONS), str(rng.choice(sorted(set(COLOR_NAMES)))),
                   str(rng.choice(CLASS_NAMES))) for _ in range(6)]
        para = paraphrase_with_facts(chosen, style, rng, held_out=False)
        want = [(f.direction, f.colour, f.label) for f in para.facts]
        got = facts(para.text)
        hit += sum(min(want.count(f), got.count(f)) for f in set(want))
        total += len(want)
    # the lexicon reads nearly all of it; a few synonyms are the encoder's to match
    assert hit / total > 0.9


def test_encoder_similarity_matches_words_outside_the_lexicon():
    from spatialoc_ros.networks.text_encoder import FrozenTextEncoder

    front = LanguageFrontEnd(FrozenTextEncoder())
    u = front.understand("I'm north of a green dumpster. A phone booth is to my east.")
    first, second = u.clauses
    assert (first.label, first.matched_by, first.direction) == ("trash bin", "encoder", "north")
    assert 0 < first.confidence < 1  # less sure than a lexicon word
    assert second.hint is None and "not a class the map knows" in second.reason
    assert u.hints == [canonical_hint("north", "green", "trash bin")]


def test_language_augmentation_rewords_a_share_of_the_training_queries():
    from spatialoc_ros.data.schema import Hint, Pose
    from spatialoc_ros.training.language_aug import LanguageAugmentation

    rng = np.random.default_rng(0)
    poses = []
    for _ in range(40):
        hints = [Hint(0, str(rng.choice(CLASS_NAMES)), np.zeros(3, np.float32),
                      str(rng.choice(sorted(set(COLOR_NAMES)))), str(rng.choice(DIRECTIONS)),
                      np.zeros(2), np.zeros(2), np.zeros(2), True) for _ in range(6)]
        poses.append(Pose(np.zeros(3), np.zeros(3), "c", "0010", hints))
    templates = [[h.text for h in p.hints] for p in poses]
    ids = list(range(len(poses)))
    assert LanguageAugmentation(poses, None, 0.0)(ids, templates, rng) == templates
    out = LanguageAugmentation(poses, None, 1.0)(ids, templates, rng)
    every = set(canonical_sentences())
    assert all(set(h) <= every for h in out)  # only sentences the text caches hold
    # three to six hints, some without their colour, all of them facts of the query
    assert any(len(h) < 6 for h in out) and out != templates
    read = stated = 0
    for h, t in zip(out, templates):
        assert 3 <= len(h) <= 6
        labels = {FRONT.understand(s).used[0].label for s in t}
        read += len(h)
        stated += sum(FRONT.understand(s).used[0].label in labels for s in h)
    # what the front end reads wrongly ("railing": fence, not guard rail) is part of the lesson
    assert stated / read > 0.9
    colourless = sum(FRONT.understand(s).used[0].colour is None for s in sum(out, []))
    assert colourless > 0


def test_the_encoder_match_caches_stay_bounded(monkeypatch):
    import spatialoc_ros.core.language as language

    class Encoder:  # one vector for everything: every class ties, so nothing is matched
        def encode_pooled(self, sentences):
            import torch

            return torch.ones(len(sentences), 8) / 8 ** 0.5

    monkeypatch.setattr(language, "MAX_CACHED_WORDS", 5)
    front = LanguageFrontEnd(Encoder())
    for i in range(20):
        front.understand(f"I'm north of a zorbl{chr(97 + i)}")
        assert len(front._phrase_cache) <= 6
