"""Paraphrases of the benchmark's descriptions: the same facts in other words.

A description states hints, each a fact (direction, colour, class); the benchmark
writes every hint from one template, "The pose is north of a gray building.".
This module writes the same facts with other sentence frames, stated from the
object ("A gray building is south of me."), with everyday words for classes and
colours, as run-on speech, or all of these mixed: for training augmentation and
for evaluation sets whose wordings training never saw.

Every frame, synonym and speech filler belongs to one of two families, the
training family or the held-out family (the first and the second tuple of each
table entry below). ``held_out=True`` draws only from the held-out family,
``False`` only from the training family; the template's own words (its sentence,
class names and colour names) belong to both. Given the facts, the style, the
family and the state of the numpy Generator, the output is fixed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .constants import CLASS_NAMES, COLOR_NAMES, SPLITS

STYLES = ("template", "frames", "inverted", "synonyms", "template3", "partial", "speech",
          "mixed")
AUGMENT_STYLES = ("frames", "inverted", "synonyms", "speech", "mixed")
SUBSET_SIZE = 3  # hints kept by template3 and partial
ON_TOP = "on-top"
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east", ON_TOP: ON_TOP}


class HintFacts(NamedTuple):
    """What one hint states; ``colour`` is None where a paraphrase leaves it out."""

    direction: str  # north / south / east / west / on-top: where the pose is, seen from the object
    colour: Optional[str]
    label: str


def facts_of(pose) -> List[HintFacts]:
    """The facts of a :class:`~spatialoc_ros.data.schema.Pose`'s hints, in order."""
    return [HintFacts(h.direction, h.object_color_text, h.object_label) for h in pose.hints]


# --------------------------------------------------------------------------- tables

# Each entry: (training family, held-out family).
_COLOUR_TABLE: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "dark-green": (("dark green", "deep green", "bottle green", "dark-green coloured"),
                   ("forest green", "darkish green")),
    "gray": (("grey", "greyish", "mid grey", "grey coloured"), ("grayish", "slate grey")),
    "gray-green": (("grey-green", "greyish green", "sage", "grey green"),
                   ("greenish grey", "olive grey")),
    "bright-gray": (("light grey", "pale grey", "light gray", "light-grey"),
                    ("silvery", "off-white")),
    "black": (("blackish", "jet black", "very dark", "dark black"), ("pitch-black", "charcoal")),
    "green": (("greenish", "bright green", "leafy green", "green coloured"),
              ("grass-green", "emerald")),
    "beige": (("sand-coloured", "sand-colored", "tan", "cream"), ("sandy", "light brown")),
}

_CLASS_TABLE: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "building": (("house", "block of flats", "office block", "apartment building"),
                 ("tower block", "townhouse")),
    "pole": (("post", "utility pole", "telegraph pole", "metal post"), ("mast", "pillar")),
    "traffic light": (("traffic signal", "stoplight", "traffic lights", "set of traffic lights"),
                      ("signal light", "stop light")),
    "traffic sign": (("road sign", "street sign", "sign", "signboard"),
                     ("signpost", "warning sign")),
    "garage": (("shed", "carport", "lock-up", "garage building"), ("outbuilding", "car shelter")),
    "stop": (("bus stop", "tram stop", "bus shelter", "tram shelter"),
             ("transit stop", "streetcar stop")),
    "smallpole": (("bollard", "short post", "small post", "bollards"),
                  ("marker post", "stubby post")),
    "lamp": (("street lamp", "streetlight", "lamp post", "street light"),
             ("light pole", "lamppost")),
    "trash bin": (("bin", "rubbish bin", "trash can", "wheelie bin"),
                  ("litter bin", "garbage can")),
    "vending machine": (("ticket machine", "drinks machine", "vending kiosk", "vendor machine"),
                        ("snack machine", "ticket dispenser")),
    "box": (("utility box", "cabinet", "electrical box", "metal box"),
            ("junction box", "switch cabinet")),
    "road": (("street", "roadway", "carriageway", "tarmac"), ("asphalt", "avenue")),
    "sidewalk": (("pavement", "footpath", "walkway", "side walk"),
                 ("footway", "pedestrian path")),
    "parking": (("car park", "parking lot", "parking area", "parking place"),
                ("parking space", "parking bay")),
    "wall": (("brick wall", "stone wall", "retaining wall", "low wall"),
             ("garden wall", "masonry")),
    "fence": (("railings", "chain-link fence", "metal fence", "wooden fence"),
              ("palisade", "fencing")),
    "guard rail": (("crash barrier", "guardrail", "safety barrier", "guard railing"),
                   ("traffic barrier", "roadside barrier")),
    "bridge": (("overpass", "flyover", "footbridge", "road bridge"),
               ("viaduct", "overbridge")),
    "tunnel": (("underpass", "subway", "tunnel mouth", "road tunnel"),
               ("underground passage", "covered passage")),
    "vegetation": (("trees", "bushes", "hedge", "greenery", "shrubs"),
                   ("shrubbery", "foliage", "plants")),
    "terrain": (("grass", "lawn", "grassy area", "grass verge"), ("turf", "meadow")),
}
_PLURAL = frozenset({"traffic lights", "bollards", "railings", "trees", "bushes", "shrubs",
                     "plants"})
_MASS = frozenset({"tarmac", "asphalt", "masonry", "fencing", "greenery", "shrubbery", "foliage",
                   "grass", "turf"})

# Frames: {d} a compass word, {o} the object's noun phrase; {be}, {s} and {there} agree with
# it. A subject frame states the pose's direction from the object, an object frame the
# object's direction from the pose (the opposite), a bare frame has no subject at all.
TEMPLATE_PATTERN = "The pose is {d} of {o}."
_FRAME_TABLE = {
    ("subject", False): (
        ("I'm {d} of {o}.", "I am standing just {d} of {o}.", "My position is {d} of {o}.",
         "You'll find me to the {d} of {o}.", "I'm located {d} of {o}.",
         "I am a little {d} of {o}.", "I'm somewhere {d} of {o}.", "I'm standing {d} of {o}.",
         "My location is {d} of {o}."),
        ("I'm positioned {d} of {o}.", "We are {d} of {o}.", "I find myself {d} of {o}.",
         "Head {d} from {o} and you'll find me."),
    ),
    ("bare", False): (("{d} of {o}.", "A bit {d} of {o}."), ("Just {d} of {o}.",)),
    ("subject", True): (
        ("I'm on top of {o}.", "I'm standing on {o}.", "I am on {o}.",
         "My position is on top of {o}.", "I'm right on top of {o}."),
        ("I'm walking on {o}.", "I'm located atop {o}."),
    ),
    ("bare", True): (("On top of {o}.", "Right on {o}."), ("Standing on {o}.",)),
    ("object", False): (
        ("{o} {be} {d} of me.", "{there} {o} to my {d}.", "To my {d} there {be} {o}.",
         "{o} lie{s} {d} of my position.", "{o} {be} to the {d} of me.",
         "{o} {be} {d} of my position.", "On my {d} side there {be} {o}."),
        ("{o} can be seen to my {d}.", "I have {o} to my {d}.", "{o} {be} {d} of where I am.",
         "Looking {d}, I see {o}."),
    ),
    ("object", True): (
        ("{o} {be} under me.", "{there} {o} beneath my feet.", "{o} {be} below me.",
         "Under me there {be} {o}."),
        ("{o} {be} right underneath me.", "I have {o} under my feet."),
    ),
}

# Speech: openers start a description, connectors join clauses, hedges precede a clause.
_FILLER_TABLE = {
    "opener": (("um", "uh", "okay so", "so", "i think"), ("well", "er", "right so")),
    "connector": (("and", "then", "also", "and uh", "and also", "and then", "um"),
                  ("plus", "and er", "oh and")),
    "hedge": (("like", "i think", "uh"), ("you know", "i guess")),
}


@dataclass(frozen=True)
class Word:
    """A word or phrase of the tables: a class or colour name, or a speech filler."""

    text: str
    meaning: str  # the class or colour it names; for a filler its role
    held_out: Optional[bool]  # None: the template's own word, allowed in both families
    number: str = "singular"  # singular / plural / mass

    @property
    def is_template(self) -> bool:
        return self.held_out is None


@dataclass(frozen=True)
class Frame:
    """A sentence frame for one hint."""

    pattern: str
    kind: str  # template / subject / bare / object
    on_top: bool
    held_out: Optional[bool]  # None: the template, allowed in both families

    @property
    def inverted(self) -> bool:
        """True if the sentence states the object's direction from the pose (the opposite)."""
        return self.kind == "object"


def _number(text: str) -> str:
    return "plural" if text in _PLURAL else "mass" if text in _MASS else "singular"


def _words(table, name) -> Tuple[Word, ...]:
    train, held = table[name]
    return tuple(Word(t, name, held_out, _number(t))
                 for held_out, texts in ((False, train), (True, held)) for t in texts)


COLOUR_WORDS: Dict[str, Word] = {c: Word(c, c, None) for c in dict.fromkeys(COLOR_NAMES)}
CLASS_WORDS: Dict[str, Word] = {c: Word(c, c, None) for c in CLASS_NAMES}
COLOUR_SYNONYMS: Dict[str, Tuple[Word, ...]] = {c: _words(_COLOUR_TABLE, c) for c in COLOUR_WORDS}
CLASS_SYNONYMS: Dict[str, Tuple[Word, ...]] = {c: _words(_CLASS_TABLE, c) for c in CLASS_NAMES}
FILLERS: Dict[str, Tuple[Word, ...]] = {r: _words(_FILLER_TABLE, r) for r in _FILLER_TABLE}
TEMPLATE_FRAMES = (Frame(TEMPLATE_PATTERN, "template", False, None),
                   Frame(TEMPLATE_PATTERN, "template", True, None))
FRAMES: Tuple[Frame, ...] = TEMPLATE_FRAMES + tuple(
    Frame(p, kind, on_top, held_out)
    for (kind, on_top), families in _FRAME_TABLE.items()
    for held_out, patterns in zip((False, True), families) for p in patterns)


def table_entries() -> List[object]:
    """Every frame, synonym and filler of the tables (template words included)."""
    return (list(FRAMES) + list(COLOUR_WORDS.values()) + list(CLASS_WORDS.values())
            + [w for ws in COLOUR_SYNONYMS.values() for w in ws]
            + [w for ws in CLASS_SYNONYMS.values() for w in ws]
            + [w for ws in FILLERS.values() for w in ws])


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Clause:
    """One hint as written: the fact, the frame and the words used."""

    facts: HintFacts  # the hint's facts; colour None where it was left out
    frame: Frame
    colour: Optional[Word]  # None where the colour was left out
    noun: Word
    direction: str  # the compass word written (the opposite for an object frame); on-top as is
    text: str  # the sentence before the style's casing, punctuation and joining


@dataclass(frozen=True)
class Paraphrase:
    """A paraphrased description and how it was made."""

    text: str
    style: str
    clauses: Tuple[Clause, ...]
    fillers: Tuple[Word, ...] = ()

    @property
    def facts(self) -> List[HintFacts]:
        """The facts the text states, in order (colour None where left out)."""
        return [c.facts for c in self.clauses]

    def entries(self) -> List[object]:
        """Every table entry the text used: frames, words and fillers."""
        out: List[object] = [c.frame for c in self.clauses] + [c.noun for c in self.clauses]
        out += [c.colour for c in self.clauses if c.colour is not None]
        return out + list(self.fillers)


# --------------------------------------------------------------------------- clauses


def _allowed(entry, held_out: bool) -> bool:
    return entry.held_out is None or entry.held_out == held_out


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _family(entries: Iterable, held_out: bool) -> list:
    return [e for e in entries if e.held_out == held_out]


def _indefinite(head: str) -> str:
    w = head.lower()
    sounds_like_you = w.startswith(("uti", "uni", "use", "usu"))
    vowel = w[:1] in ("a", "e", "i", "o") or (w[:1] == "u" and not sounds_like_you)
    return "an" if vowel else "a"


def _noun_phrase(colour: Optional[Word], noun: Word, rng: Optional[np.random.Generator]) -> str:
    """Article, colour and noun; ``rng`` None gives the template's form ("a gray building")."""
    head = f"{colour.text} {noun.text}" if colour is not None else noun.text
    if rng is None:
        return f"a {head}"
    if noun.number == "singular":
        article = "the" if rng.random() < 0.2 else _indefinite(head)
    else:
        article = _pick(rng, ("", "some", "the"))
    return f"{article} {head}".strip()


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


class _Words(NamedTuple):
    """How a clause picks its class and colour words: template, synonyms or a mix."""

    mode: str  # template / synonyms / mixed
    held_out: bool


def _choose_word(template: Word, synonyms: Sequence[Word], words: _Words,
                 rng: np.random.Generator) -> Word:
    family = _family(synonyms, words.held_out)
    if words.mode == "template" or not family:
        return template
    if words.mode == "mixed" and rng.random() < 0.5:
        return template
    return _pick(rng, family)


def _choose_frame(fact: HintFacts, kinds: Sequence[str], held_out: bool, prev_kind: Optional[str],
                  rng: np.random.Generator, template_p: float = 0.0) -> Frame:
    on_top = fact.direction == ON_TOP
    if "template" in kinds and (len(kinds) == 1 or rng.random() < template_p):
        return TEMPLATE_FRAMES[int(on_top)]
    # A bare clause right after an object clause would read as the object's direction.
    frames = [f for f in FRAMES if f.kind in kinds and f.kind != "template" and f.on_top == on_top
              and _allowed(f, held_out) and not (f.kind == "bare" and prev_kind == "object")]
    return _pick(rng, frames)


def _clause(fact: HintFacts, frame: Frame, words: _Words, rng: np.random.Generator,
            drop_colour: bool = False) -> Clause:
    noun = _choose_word(CLASS_WORDS[fact.label], CLASS_SYNONYMS[fact.label], words, rng)
    colour = None
    if not drop_colour:
        colour = _choose_word(COLOUR_WORDS[fact.colour], COLOUR_SYNONYMS[fact.colour], words, rng)
    template_form = frame.kind == "template" and words.mode == "template"
    phrase = _noun_phrase(colour, noun, None if template_form else rng)
    direction = OPPOSITE[fact.direction] if frame.inverted else fact.direction
    plural = noun.number == "plural"
    text = frame.pattern.format(d=direction, o=phrase, be="are" if plural else "is",
                                s="" if plural else "s",
                                there="there are" if plural else "there's")
    stated = fact if colour is not None else fact._replace(colour=None)
    return Clause(stated, frame, colour, noun, direction, _capitalise(text))


def _clauses(facts: Sequence[HintFacts], kinds: Sequence[str], words: _Words,
             rng: np.random.Generator, drop: Sequence[bool], template_p: float = 0.0
             ) -> List[Clause]:
    out: List[Clause] = []
    for fact, dropped in zip(facts, drop):
        prev = out[-1].frame.kind if out else None
        frame = _choose_frame(fact, kinds, words.held_out, prev, rng, template_p)
        out.append(_clause(fact, frame, words, rng, dropped))
    return out


# --------------------------------------------------------------------------- styles

_NOT_TEMPLATE = ("subject", "bare", "object")
_ANY_FRAME = ("template",) + _NOT_TEMPLATE


def _spoken(text: str) -> str:
    """Lower case, no punctuation but the apostrophes of words ("i'm", "there's")."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def _speech(facts, rng, held_out, drop) -> Paraphrase:
    fillers: List[Word] = []
    parts: List[str] = []

    def filler(role: str) -> None:
        word = _pick(rng, _family(FILLERS[role], held_out))
        fillers.append(word)
        parts.append(word.text)

    if rng.random() < 0.6:
        filler("opener")
    clauses = _clauses(facts, _NOT_TEMPLATE, _Words("mixed", held_out), rng, drop)
    for i, c in enumerate(clauses):
        # Run on without a connector now and then, never into a clause without a subject.
        if i > 0 and (c.frame.kind == "bare" or rng.random() < 0.8):
            filler("connector")
        if rng.random() < 0.15:
            filler("hedge")
        parts.append(_spoken(c.text))
    return Paraphrase(" ".join(parts), "speech", tuple(clauses), tuple(fillers))


def _mixed(facts, rng, held_out, drop) -> Paraphrase:
    clauses = _clauses(facts, _ANY_FRAME, _Words("mixed", held_out), rng, drop, template_p=0.25)
    text = ""
    for i, c in enumerate(clauses):
        sentence = c.text[:-1] if c.text.endswith(".") else c.text
        case = rng.random()
        sentence = (sentence.lower() if case < 0.35 else sentence.upper() if case < 0.45
                    else sentence)
        if i > 0:
            text += _pick(rng, (". ", ". ", ", ", " ", "; "))
        text += sentence
    return Paraphrase(text + _pick(rng, (".", "")), "mixed", tuple(clauses))


def _subset(n: int, k: int, rng: np.random.Generator) -> List[int]:
    if n <= k:
        return list(range(n))
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def _render(facts: Sequence[HintFacts], style: str, rng: np.random.Generator, held_out: bool,
            drop: Sequence[bool]) -> Paraphrase:
    if style == "speech":
        return _speech(facts, rng, held_out, drop)
    if style == "mixed":
        return _mixed(facts, rng, held_out, drop)
    if style in ("template", "template3"):
        clauses = _clauses(facts, ("template",), _Words("template", held_out), rng, drop)
    elif style == "frames":
        clauses = _clauses(facts, ("subject", "bare"), _Words("template", held_out), rng, drop)
    elif style == "inverted":
        clauses = _clauses(facts, ("object",), _Words("template", held_out), rng, drop)
    elif style == "synonyms":
        clauses = _clauses(facts, _ANY_FRAME, _Words("synonyms", held_out), rng, drop,
                           template_p=0.3)
    else:  # partial
        clauses = _clauses(facts, _NOT_TEMPLATE, _Words("mixed", held_out), rng, drop)
    return Paraphrase(" ".join(c.text for c in clauses), style, tuple(clauses))


def _as_facts(facts) -> List[HintFacts]:
    out = [HintFacts(*f) for f in facts]
    for f in out:
        if (f.direction not in OPPOSITE or f.label not in CLASS_WORDS
                or f.colour not in COLOUR_WORDS):
            raise ValueError(f"not a benchmark hint: {tuple(f)}")
    return out


def paraphrase_with_facts(facts: Iterable, style: str, rng: np.random.Generator,
                          held_out: bool = False) -> Paraphrase:
    """One description of ``facts`` (HintFacts or (direction, colour, label) triples) in
    ``style``, using only the held-out or only the training family besides template words.

    ``template3`` and ``partial`` first draw the same 3 hints from ``rng``.
    """
    facts = _as_facts(facts)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r} (expected one of {', '.join(STYLES)})")
    if style in ("template3", "partial"):
        facts = [facts[i] for i in _subset(len(facts), SUBSET_SIZE, rng)]
    return _render(facts, style, rng, bool(held_out), [False] * len(facts))


def paraphrase(facts: Iterable, style: str, rng: np.random.Generator,
               held_out: bool = False) -> str:
    """The text of :func:`paraphrase_with_facts`."""
    return paraphrase_with_facts(facts, style, rng, held_out).text


def augment_with_facts(facts: Iterable, rng: np.random.Generator, drop_colour: float = 0.15,
                       min_hints: int = 3) -> Paraphrase:
    """A training paraphrase: a random non-template style (training family only); half the
    time only ``min_hints``..all of the hints (in order); each colour left out with
    probability ``drop_colour``."""
    facts = _as_facts(facts)
    style = _pick(rng, AUGMENT_STYLES)
    if len(facts) > min_hints and rng.random() < 0.5:
        k = int(rng.integers(max(min_hints, 1), len(facts) + 1))
        facts = [facts[i] for i in _subset(len(facts), k, rng)]
    drop = list(rng.random(len(facts)) < drop_colour)
    return _render(facts, style, rng, False, drop)


def augment_description(facts: Iterable, rng: np.random.Generator, drop_colour: float = 0.15,
                        min_hints: int = 3) -> str:
    """The text of :func:`augment_with_facts`."""
    return augment_with_facts(facts, rng, drop_colour, min_hints).text


# --------------------------------------------------------------------------- query files


def check_styles(styles: Iterable[str]) -> List[str]:
    """The styles, in order and without repeats; SpatialocError for an unknown one."""
    from ..errors import SpatialocError

    out = list(dict.fromkeys(s.strip() for s in styles if s.strip()))
    unknown = [s for s in out if s not in STYLES]
    if unknown or not out:
        raise SpatialocError(f"unknown style {unknown[0] if unknown else ''!r} "
                             f"(expected some of {', '.join(STYLES)})")
    return out


def load_split_poses(root, split: str) -> list:
    """The poses of a split's scenes (cells are not read)."""
    from ..errors import DataError
    from . import kitti360pose

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    poses = []
    for scene in SPLITS[split]:
        path = kitti360pose.poses_path(root, scene)
        if not path.is_file():
            raise DataError(f"{path}: file not found (split {split} needs scene {scene})")
        poses.extend(kitti360pose.read_poses(path))
    if not poses:
        raise DataError(f"{root}: split {split} has no poses")
    return poses


def write_query_sets(data, split: str, out, styles: Iterable[str] = STYLES,
                     max_queries: int = 900, seed: int = 0, held_out: bool = True
                     ) -> List[Tuple[Path, int]]:
    """Write ``out/<style>.jsonl`` for each style: the same sampled poses in each, one query
    ``{"text", "scene", "pose_w", "cell_id", "style", "facts"}`` a line.

    ``max_queries`` poses are sampled with ``seed`` (0: all); every pose has its own
    Generator, seeded with (seed, pose index), in every style, so template3 and
    partial state the same 3 hints. Returns (path, number of queries) per file.
    """
    from ..atomic import write_text
    from ..errors import SpatialocError

    styles = check_styles(styles)
    if max_queries < 0 or seed < 0:
        raise SpatialocError("--max and --seed must not be negative")
    poses = load_split_poses(data, split)
    index = np.arange(len(poses))
    if max_queries and max_queries < len(poses):
        index = np.sort(np.random.default_rng(seed).choice(len(poses), max_queries,
                                                           replace=False))
    written = []
    for style in styles:
        lines = []
        for i in index:
            pose = poses[int(i)]
            p = paraphrase_with_facts(facts_of(pose), style, np.random.default_rng([seed, int(i)]),
                                      held_out)
            lines.append(json.dumps({
                "text": p.text, "scene": pose.scene,
                "pose_w": [float(x) for x in np.asarray(pose.pose_w).reshape(-1)[:3]],
                "cell_id": pose.cell_id, "style": style,
                "facts": [list(f) for f in p.facts]}))
        path = write_text(Path(out) / f"{style}.jsonl", "\n".join(lines) + "\n")
        written.append((path, len(lines)))
    return written
