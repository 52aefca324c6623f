"""The paraphrase generator: every style keeps the facts, the two word families stay apart,
outputs are reproducible, and ``spatialoc data paraphrase`` writes comparable query files."""
import json
import re
import string

import numpy as np
import pytest

from spatialoc_ros import cli
from spatialoc_ros.data import paraphrase as pp
from spatialoc_ros.data.constants import (CLASS_NAMES, COLOR_CENTERS, COLOR_NAMES, DIRECTIONS,
                                          VAL_SCENES)
from spatialoc_ros.data.schema import Cell, Hint, Object3d, Pose

FACTS = [("north", "gray", "building"), ("on-top", "gray", "sidewalk"),
         ("east", "black", "traffic light"), ("west", "green", "vegetation"),
         ("south", "beige", "trash bin"), ("north", "bright-gray", "pole")]
FULL_STYLES = [s for s in pp.STYLES if s not in ("template3", "partial")]
SEEDS = range(40)


def make_hint(direction, colour, label):
    z2 = np.zeros(2)
    return Hint(object_instance_id=1, object_label=label,
                object_color_rgb=COLOR_CENTERS[COLOR_NAMES.index(colour)].astype(np.float32),
                object_color_text=colour, direction=direction, offset_center=z2,
                offset_closest=z2, closest_point=z2, is_matched=False)


def make_pose(facts, scene="0010", cell_id="0010_00000", xyz=(1.0, 2.0, 3.0)):
    return Pose(pose=np.array([0.5, 0.5, 0.1]), pose_w=np.array(xyz, dtype=np.float64),
                cell_id=cell_id, scene=scene, hints=[make_hint(*f) for f in facts])


def random_facts(rng, n=6):
    colours = sorted(set(COLOR_NAMES))
    return [pp.HintFacts(DIRECTIONS[int(rng.integers(len(DIRECTIONS)))],
                         colours[int(rng.integers(len(colours)))],
                         CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]) for _ in range(n)]


def norm(text):
    """Lower case, hyphens and punctuation as spaces: how speech writes a word."""
    return " " + " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()) + " "


def mentions(text, phrase):
    return norm(phrase) in norm(text)


# --------------------------------------------------------------------------- tables


def test_tables_cover_every_class_and_colour_in_both_families():
    assert set(pp.COLOUR_SYNONYMS) == set(COLOR_NAMES)
    assert list(pp.CLASS_SYNONYMS) == CLASS_NAMES
    for table in (pp.COLOUR_SYNONYMS, pp.CLASS_SYNONYMS, pp.FILLERS):
        for name, words in table.items():
            train = {w.text for w in words if w.held_out is False}
            held = {w.text for w in words if w.held_out is True}
            assert train and held and not train & held, name
    assert cli.PARAPHRASE_STYLES == pp.STYLES


def test_held_out_family_has_frames_of_every_kind_and_about_a_third():
    groups = {(f.kind, f.on_top) for f in pp.FRAMES if f.kind != "template"}
    for kind, on_top in groups:
        frames = [f for f in pp.FRAMES if (f.kind, f.on_top) == (kind, on_top)]
        assert {f.held_out for f in frames} == {False, True}, (kind, on_top)
    entries = [e for e in pp.table_entries() if e.held_out is not None]
    share = sum(e.held_out for e in entries) / len(entries)
    assert 0.25 < share < 0.45
    patterns = [f.pattern for f in pp.FRAMES if f.kind != "template"]
    assert len(patterns) == len(set(patterns))


# --------------------------------------------------------------------------- styles


def test_template_is_the_benchmark_text():
    pose = make_pose(FACTS)
    for seed in range(3):
        for held in (False, True):
            assert pp.paraphrase(pp.facts_of(pose), "template", np.random.default_rng(seed),
                                 held) == pose.text


def check_clause(text, clause, fact, held):
    """The clause states ``fact`` with words of the tables, and the text contains them."""
    assert clause.facts == fact
    assert clause.noun in (pp.CLASS_WORDS[fact.label],) + pp.CLASS_SYNONYMS[fact.label]
    assert clause.colour in (pp.COLOUR_WORDS[fact.colour],) + pp.COLOUR_SYNONYMS[fact.colour]
    assert mentions(text, clause.noun.text) and mentions(text, clause.colour.text)
    assert clause.frame.on_top == (fact.direction == "on-top")
    expected = pp.OPPOSITE[fact.direction] if clause.frame.inverted else fact.direction
    assert clause.direction == expected
    if fact.direction != "on-top":
        assert mentions(text, expected)
    for entry in (clause.frame, clause.noun, clause.colour):
        assert entry.held_out in (None, held), entry


@pytest.mark.parametrize("held", [False, True])
@pytest.mark.parametrize("style", pp.STYLES)
def test_every_style_keeps_the_facts(style, held):
    for seed in SEEDS:
        facts = random_facts(np.random.default_rng(1000 + seed))
        p = pp.paraphrase_with_facts(facts, style, np.random.default_rng(seed), held)
        assert p.style == style
        if style in ("template3", "partial"):
            assert len(p.clauses) == 3
            assert all(f in facts for f in p.facts)
        else:
            assert p.facts == facts
        for clause, fact in zip(p.clauses, p.facts):
            check_clause(p.text, clause, fact, held)
            # Every fact can be found from the text alone, with the tables' words.
            nouns = (pp.CLASS_WORDS[fact.label],) + pp.CLASS_SYNONYMS[fact.label]
            assert any(mentions(p.text, w.text) for w in nouns)
        assert all(w.held_out in (None, held) for w in p.entries())


def kinds(p):
    return {c.frame.kind for c in p.clauses}


def test_style_specific_wording():
    for seed in SEEDS:
        run = {s: pp.paraphrase_with_facts(FACTS, s, np.random.default_rng(seed)) for s in
               pp.STYLES}
        assert kinds(run["frames"]) <= {"subject", "bare"}
        assert kinds(run["inverted"]) == {"object"}
        assert kinds(run["partial"]) <= {"subject", "bare", "object"}
        for s in ("template", "template3", "frames", "inverted"):
            assert all(c.noun.is_template and c.colour.is_template for c in run[s].clauses)
        assert not any(c.noun.is_template or c.colour.is_template
                       for c in run["synonyms"].clauses)
        assert run["template3"].text == " ".join(
            f"The pose is {d} of a {c} {label}." for d, c, label in run["template3"].facts)


def test_inverted_states_the_opposite_direction():
    for seed in range(10):
        for held in (False, True):
            rng = np.random.default_rng(seed)
            text = pp.paraphrase([("north", "gray", "building")], "inverted", rng, held)
            assert mentions(text, "south") and not mentions(text, "north")
            text = pp.paraphrase([("on-top", "gray", "sidewalk")], "inverted", rng, held)
            assert re.search(r"under|beneath|below", text.lower())


def test_speech_is_lower_case_without_punctuation():
    allowed = set(string.ascii_lowercase + string.digits + " '")
    for held in (False, True):
        fillers = set()
        for seed in SEEDS:
            p = pp.paraphrase_with_facts(FACTS, "speech", np.random.default_rng(seed), held)
            assert set(p.text) <= allowed, p.text
            assert "  " not in p.text and p.text == p.text.strip()
            fillers |= {w.meaning for w in p.fillers}
        assert fillers == {"opener", "connector", "hedge"}


def test_held_out_and_training_families_do_not_meet():
    for held in (False, True):
        used = set()
        for style in pp.STYLES:
            for seed in SEEDS:
                facts = random_facts(np.random.default_rng(seed))
                p = pp.paraphrase_with_facts(facts, style, np.random.default_rng(seed), held)
                used |= set(p.entries())
        assert all(e.held_out in (None, held) for e in used)
        # Each kind of wording of this family is exercised.
        frames = {(e.kind, e.on_top) for e in used if isinstance(e, pp.Frame)
                  and e.held_out is held}
        assert frames == {(f.kind, f.on_top) for f in pp.FRAMES if f.kind != "template"}
        words = [e for e in used if isinstance(e, pp.Word) and e.held_out is held]
        assert {w.meaning for w in words} >= set(CLASS_NAMES) | set(COLOR_NAMES)


def test_outputs_are_deterministic():
    for style in pp.STYLES:
        texts = [pp.paraphrase(FACTS, style, np.random.default_rng(7), True) for _ in range(2)]
        assert texts[0] == texts[1]
    runs = {pp.paraphrase(FACTS, "mixed", np.random.default_rng(s)) for s in range(10)}
    assert len(runs) > 5
    a = [pp.augment_description(FACTS, np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]


def test_template3_and_partial_state_the_same_three_hints():
    for seed in SEEDS:
        t3 = pp.paraphrase_with_facts(FACTS, "template3", np.random.default_rng(seed))
        part = pp.paraphrase_with_facts(FACTS, "partial", np.random.default_rng(seed), True)
        assert t3.facts == part.facts and len(t3.facts) == 3
        assert t3.text != part.text
        assert [FACTS.index(tuple(f)) for f in t3.facts] == sorted(
            FACTS.index(tuple(f)) for f in t3.facts)


def test_augmentation_uses_training_words_drops_colours_and_hints():
    sizes, dropped, styles = set(), 0, set()
    for seed in range(200):
        p = pp.augment_with_facts(FACTS, np.random.default_rng(seed))
        styles.add(p.style)
        assert p.style in pp.AUGMENT_STYLES
        assert all(e.held_out in (None, False) for e in p.entries())
        assert 3 <= len(p.clauses) <= 6
        sizes.add(len(p.clauses))
        for c in p.clauses:
            if c.colour is None:
                dropped += 1
                assert c.facts.colour is None
        kept = [(f.direction, f.label) for f in p.facts]  # a subset of the hints, in order
        assert kept == [(d, label) for d, _, label in FACTS if (d, label) in kept]
    assert sizes == {3, 4, 5, 6} and styles == set(pp.AUGMENT_STYLES)
    assert 0.05 < dropped / (200 * 4.5) < 0.3
    p = pp.augment_with_facts(FACTS, np.random.default_rng(0), drop_colour=1.0)
    assert all(f.colour is None for f in p.facts)
    colours = list(pp.COLOUR_WORDS.values()) + [w for ws in pp.COLOUR_SYNONYMS.values()
                                                for w in ws]
    assert not any(mentions(p.text, w.text) for w in colours)
    assert isinstance(pp.augment_description(FACTS, np.random.default_rng(0)), str)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        pp.paraphrase(FACTS, "poetry", np.random.default_rng(0))
    with pytest.raises(ValueError):
        pp.paraphrase([("up", "gray", "building")], "frames", np.random.default_rng(0))


# --------------------------------------------------------------------------- command line


@pytest.fixture()
def val_dataset(tmp_path):
    """A validation scene of one cell and 12 poses of 6 random hints each."""
    from spatialoc_ros.data import kitti360pose

    rng = np.random.default_rng(5)
    obj = Object3d(id=0, instance_id=1, label="building", xyz=rng.random((20, 3)),
                   rgb=np.full((20, 3), 0.5, np.float32))
    cell = Cell(id="0010_00000", scene="0010", bbox_w=np.array([0, 0, 0, 30, 30, 30.0]),
                cell_size=30.0, objects=[obj])
    poses = [make_pose(random_facts(rng), xyz=(float(i), 2.0 * i, 1.7)) for i in range(12)]
    root = tmp_path / "ds"
    kitti360pose.write_scene(root, VAL_SCENES[0], [cell], poses)
    return root, poses


def run_cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_the_same_poses_in_every_style(capsys, val_dataset, tmp_path):
    root, poses = val_dataset
    out = tmp_path / "para"
    status, stdout, err = run_cli(capsys, "data", "paraphrase", "--data", root, "--split", "val",
                                  "--out", out, "--max", 5, "--seed", 3)
    assert status == 0, err
    assert stdout.splitlines() == [f"{out / s}.jsonl: 5 queries" for s in pp.STYLES]
    files = {s: read_jsonl(out / f"{s}.jsonl") for s in pp.STYLES}
    by_xyz = {tuple(p.pose_w): p for p in poses}
    for style, rows in files.items():
        assert [r["pose_w"] for r in rows] == [r["pose_w"] for r in files["template"]]
        for r in rows:
            assert set(r) == {"text", "scene", "pose_w", "cell_id", "style", "facts"}
            assert r["style"] == style and r["scene"] == "0010" and r["cell_id"] == "0010_00000"
    for r in files["template"]:
        assert r["text"] == by_xyz[tuple(r["pose_w"])].text
    for a, b in zip(files["template3"], files["partial"]):
        assert a["facts"] == b["facts"] and len(a["facts"]) == 3
    assert files["speech"][0]["text"] == files["speech"][0]["text"].lower()

    again = tmp_path / "again"
    run_cli(capsys, "data", "paraphrase", "--data", root, "--split", "val", "--out", again,
            "--max", 5, "--seed", 3, "--styles", "speech,partial")
    assert sorted(p.name for p in again.iterdir()) == ["partial.jsonl", "speech.jsonl"]
    assert read_jsonl(again / "speech.jsonl") == files["speech"]

    status, stdout, _ = run_cli(capsys, "data", "paraphrase", "--data", root, "--split", "val",
                                "--out", tmp_path / "all", "--max", 0, "--styles", "frames",
                                "--train-words")
    rows = read_jsonl(tmp_path / "all" / "frames.jsonl")
    assert status == 0 and len(rows) == 12 and stdout.endswith("12 queries\n")
    assert [r["pose_w"] for r in rows] == [list(p.pose_w) for p in poses]


def one_line_error(status, err, *fragments):
    lines = err.splitlines()
    assert status == cli.EXIT_ERROR and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("spatialoc: error: ")
    assert all(f in lines[0] for f in fragments)


def test_cli_errors_are_one_line(capsys, val_dataset, tmp_path):
    root, _ = val_dataset
    missing = tmp_path / "nope"
    one_line_error(*run_cli(capsys, "data", "paraphrase", "--data", missing, "--split", "val",
                            "--out", tmp_path / "o")[::2], str(missing))
    one_line_error(*run_cli(capsys, "data", "paraphrase", "--data", root, "--split", "val",
                            "--out", tmp_path / "o", "--styles", "frames,poetry")[::2], "poetry")
    one_line_error(*run_cli(capsys, "data", "paraphrase", "--data", root, "--split", "test",
                            "--out", tmp_path / "o")[::2], "file not found")
    assert not (tmp_path / "o").exists()
