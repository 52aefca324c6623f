"""The language front end: any utterance -> the hints the models use, and what was understood.

The models were trained on the benchmark's hint sentences, "The pose is
{direction} of a {colour} {class}." (README.md, "The synthetic city"). People
say the same facts in other words: run-on speech without punctuation, fillers,
everyday words ("pavement", "street lamp", "grey"), relations stated from the
object ("there's a bin to my south"), fewer facts. :class:`LanguageFrontEnd`
splits an utterance into clauses and turns each into one canonical hint
sentence, or reports why it could not:

- clauses end at punctuation, at "and", "then", "also", ... and where a new
  subject starts ("there's", "I'm"); fillers ("um", "okay so") are dropped;
  a fragment without an object and one without a direction next to it are
  joined ("to my south | there's a bin");
- a direction is a compass word; the relation is read either way round: "I'm
  north of a bin" and "a bin is south of me" / "there's a bin to my south"
  both give "north of a bin"; "I'm on / standing on / on top of", "under me"
  give on-top. Words that need a heading ("left", "behind") are reported as
  not usable, never guessed;
- classes and colours come from a small curated lexicon (British and American
  spelling, plurals); any other content phrase is matched by the frozen text
  encoder's similarity to the class names and their lexicon words (pooled
  token embeddings, cosine), accepted only above a threshold and a margin to
  the runner-up, with a confidence that falls with the similarity;
- a clause that names nothing known is reported and left out, and every
  clause left out lowers :attr:`Understanding.understood`, the share the
  Localizer uses to widen the published covariance (:mod:`.covariance`).

Hints without a colour read "The pose is north of a trash bin."; the shipped
weights are trained on such sentences (paraphrase augmentation, README.md).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..data.constants import CLASS_NAMES, COLOR_NAMES, NUM_MENTIONED

MAX_CLAUSES = 36  # a description of more than this many clauses is rejected as too long
MAX_CACHED_WORDS = 20_000  # encoder matches kept; the caches start over beyond this
ENCODER_MIN_SIMILARITY = 0.62  # cosine of pooled MiniLM embeddings; below: not this class
ENCODER_MIN_MARGIN = 0.04  # over the runner-up class
# colour words are matched as "a {word} colour"; adjectives that are no colour ("painted",
# "shiny") reach 0.70 against some colour, real colour words ("cement", "pitch-black") 0.75+
COLOUR_MIN_SIMILARITY = 0.75
COLOUR_MIN_MARGIN = 0.03
COLOURS = sorted(set(COLOR_NAMES))

_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east",
             "on-top": "on-top"}

# --- the lexicon ------------------------------------------------------------------------------

# class -> everyday words (singular; plurals are found by stripping endings)
CLASS_WORDS: Dict[str, Tuple[str, ...]] = {
    "building": ("building", "house", "home", "block of flats", "apartment block",
                 "apartment building", "office", "office block", "tower", "shop", "store",
                 "flats", "church", "school", "hotel", "warehouse", "factory"),
    "pole": ("pole", "post", "pillar", "mast", "column", "utility pole", "telegraph pole",
             "power pole"),
    "traffic light": ("traffic light", "traffic signal", "stoplight", "stop light",
                      "signal", "traffic lamp"),
    "traffic sign": ("traffic sign", "road sign", "street sign", "sign", "signpost",
                     "sign post", "signboard", "speed sign", "stop sign", "yield sign"),
    "garage": ("garage", "carport", "shed", "lock-up", "lockup"),
    "stop": ("stop", "bus stop", "tram stop", "bus shelter", "shelter", "tram shelter"),
    "smallpole": ("smallpole", "small pole", "short pole", "little pole", "small post",
                  "short post", "little post", "low post", "low pole", "stubby post",
                  "stubby pole", "tiny post", "tiny pole", "bollard", "stake"),
    "lamp": ("lamp", "street lamp", "streetlamp", "street light", "streetlight", "lamp post",
             "lamppost", "light pole", "lantern", "light"),
    "trash bin": ("trash bin", "bin", "trash can", "garbage can", "garbage bin", "rubbish bin",
                  "litter bin", "dustbin", "waste bin", "wastebasket", "trashcan", "recycling bin",
                  "wheelie bin", "trash"),
    "vending machine": ("vending machine", "ticket machine", "parking meter", "kiosk",
                        "automat", "machine", "vendor machine"),
    "box": ("box", "crate", "utility box", "electrical box", "junction box", "cabinet",
            "electric box", "container", "switch box"),
    "road": ("road", "street", "roadway", "carriageway", "lane", "avenue", "highway",
             "motorway", "drive", "asphalt"),
    "sidewalk": ("sidewalk", "pavement", "footpath", "walkway", "footway", "path",
                 "pedestrian path", "side walk"),
    "parking": ("parking", "parking lot", "car park", "parking space", "parking spot",
                "parking area", "parking place", "carpark", "parking bay"),
    "wall": ("wall", "brick wall", "stone wall", "retaining wall"),
    "fence": ("fence", "fencing", "railing", "picket fence", "chain link fence"),
    "guard rail": ("guard rail", "guardrail", "crash barrier", "barrier", "safety barrier",
                   "road barrier", "crash rail"),
    "bridge": ("bridge", "overpass", "flyover", "footbridge", "viaduct"),
    "tunnel": ("tunnel", "underpass", "subway"),
    "vegetation": ("vegetation", "tree", "bush", "shrub", "hedge", "hedgerow", "plant",
                   "greenery", "foliage", "shrubbery", "tree line", "treeline", "undergrowth"),
    "terrain": ("terrain", "grass", "lawn", "field", "meadow", "verge", "grass verge",
                "dirt", "soil", "ground", "earth", "turf", "grassland", "gravel"),
}
# colour name -> everyday words
COLOUR_WORDS: Dict[str, Tuple[str, ...]] = {
    "dark-green": ("dark-green", "dark green", "deep green", "forest green", "bottle green"),
    "gray": ("gray", "grey", "mid gray", "mid grey", "medium gray", "medium grey", "dark gray",
             "dark grey", "greyish", "grayish", "slate", "concrete", "stone", "ash"),
    "gray-green": ("gray-green", "grey-green", "gray green", "grey green", "greyish green",
                   "green grey", "green gray",
                   "grayish green", "greenish gray", "greenish grey", "olive", "khaki green",
                   "sage", "sage green"),
    "bright-gray": ("bright-gray", "bright gray", "bright grey", "light gray", "light grey",
                    "pale gray", "pale grey", "silver", "silvery", "white", "whitish",
                    "off-white", "off white", "light"),
    "black": ("black", "dark", "charcoal", "jet black", "blackish"),
    "green": ("green", "greenish", "lime", "leafy green", "light green", "bright green"),
    "beige": ("beige", "tan", "cream", "sand", "sandy", "khaki", "brown", "light brown",
              "buff", "fawn", "ivory", "yellowish"),
}
COMPASS = {"north": "north", "south": "south", "east": "east", "west": "west",
           "northern": "north", "southern": "south", "eastern": "east", "western": "west",
           "northward": "north", "southward": "south", "eastward": "east", "westward": "west",
           "northwards": "north", "southwards": "south", "eastwards": "east",
           "westwards": "west"}
_DIAGONALS = {f"{a}{b}": a for a in ("north", "south") for b in ("east", "west")}
HEADING_WORDS = frozenset(["left", "right", "behind", "front", "ahead", "back", "forward",
                           "forwards", "backwards", "opposite", "across"])
_FILLERS = frozenset(["um", "umm", "uh", "uhh", "uhm", "erm", "er", "ah", "hmm", "mm", "mhm",
                      "okay", "ok", "yeah", "yes", "well", "oh", "basically", "actually",
                      "alright", "hey", "hi", "hello", "please", "anyway", "sorry", "like",
                      "kinda", "probably", "maybe", "guess", "think", "reckon", "believe",
                      "pretty", "sure", "really", "quite", "very", "roughly", "exactly",
                      "just", "directly", "slightly", "somewhat", "immediately", "bit",
                      "couple", "meters", "metres", "meter", "metre", "feet", "steps",
                      "few", "some", "about", "around", "approximately", "so", "now",
                      "can", "see", "could", "would", "say", "know", "mean", "you",
                      "one", "two", "three", "four", "five", "ten", "twenty"])
_STOP = frozenset(["a", "an", "the", "is", "are", "am", "was", "be", "being", "been", "of",
                   "to", "at", "in", "on", "by", "there", "here", "it", "its", "this",
                   "that", "these", "those", "which", "where", "what", "side", "i", "we",
                   "me", "us", "my", "our", "myself", "pose", "position", "location",
                   "standing", "stand", "stands", "stood", "located", "sitting", "sits",
                   "sit", "lies", "lie", "lying", "stay", "staying", "find", "found",
                   "located", "placed", "waiting", "wait", "walking", "also", "with",
                   "has", "have", "got", "get", "from", "for", "and", "then", "but",
                   "currently", "right", "next", "towards", "toward", "up", "down", "top",
                   "under", "beneath", "below", "underneath", "above", "over", "atop",
                   "feet", "foot", "just", "of", "off", "away", "far", "close", "near",
                   "nearby", "beside", "besides", "between", "there's", "im", "not",
                   "no", "do", "does", "did", "will", "should", "go", "going", "am",
                   "spot", "place", "area", "thing", "something", "object", "big", "large",
                   "small", "little", "tall", "short", "long", "old", "new", "huge", "tiny",
                   "colored", "coloured", "color", "colour", "ish", "sort", "kind", "type",
                   "looking", "look", "looks", "see", "seen", "sees", "find", "have", "head",
                   "heading", "walking", "walk", "positioned", "will", "can", "visible",
                   "set", "bunch", "row", "lot", "pair", "metal", "wooden", "concrete"])
_SUBJECT_VERBS = frozenset(["am", "are", "stand", "standing", "have", "find", "see", "can",
                           "was", "should", "must", "might", "will", "would", "could"])
_SELF = frozenset(["me", "us", "myself", "here", "i", "we"])
_BOUNDARY = frozenset(["and", "then", "also", "plus", "but", "while", "whereas", "after",
                       "afterwards", "next"])
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")
_PUNCT = re.compile(r"[.!?;,:\n\r\t]+|\s[-\u2013\u2014]\s")
_COLOURED = re.compile(r"\b([a-z]+)[- ]colou?red\b")
_ISH = re.compile(r"\b(dark|light|pale|green|grey|gray|black|white|brown|blue|yellow|red)"
                  r"(?:d?ish)\b")
_CONTRACTIONS = [(re.compile(p), r) for p, r in (
    (r"\bi'm\b", "i am"), (r"\bim\b", "i am"), (r"\bthere's\b", "there is"),
    (r"\btheres\b", "there is"), (r"\bthere're\b", "there are"), (r"\bit's\b", "it is"),
    (r"\bwe're\b", "we are"), (r"\byou'll\b", "you will"), (r"\bi've\b", "i have"),
    (r"\bthat's\b", "that is"), (r"\bwhat's\b", "what is"), (r"\bhere's\b", "here is"),
    (r"\bi'd\b", "i would"), (r"\bi'll\b", "i will"))]


def canonical_hint(direction: str, colour: Optional[str], label: str) -> str:
    """The benchmark's hint sentence; without a colour, the same sentence without it."""
    what = f"{colour} {label}" if colour else label
    return f"The pose is {direction} of a {what}."


def canonical_sentences() -> List[str]:
    """Every sentence the front end can produce (the text caches hold them all)."""
    return [canonical_hint(d, c, label) for d in _OPPOSITE for c in [None] + COLOURS
            for label in CLASS_NAMES]


# --- what was understood ----------------------------------------------------------------------


@dataclass
class Clause:
    """One clause of an utterance and the hint it became, or why it was left out."""

    text: str  # the clause as heard (fillers removed)
    hint: Optional[str] = None  # canonical hint sentence; None when left out
    direction: Optional[str] = None  # where the pose is relative to the object
    colour: Optional[str] = None
    label: Optional[str] = None
    confidence: float = 0.0  # 0..1: how sure the front end is of this hint
    reason: str = ""  # why it was left out, or what was uncertain
    matched_by: str = ""  # "lexicon" or "encoder" (how the class was found)
    unknown: str = ""  # content words outside the lexicon

    def describe(self) -> str:
        if self.hint is None:
            return f"left out: {self.reason}"
        what = " ".join(w for w in (self.colour, self.label) if w)
        note = f"; {self.reason}" if self.reason else ""
        return (f"{self.direction} of a {what} "
                f"(sure {self.confidence:.2f}, {self.matched_by}{note})")


@dataclass
class Understanding:
    """What the front end made of one utterance."""

    text: str
    clauses: List[Clause] = field(default_factory=list)

    @property
    def used(self) -> List[Clause]:
        return [c for c in self.clauses if c.hint is not None]

    @property
    def hints(self) -> List[str]:
        return [c.hint for c in self.used]

    @property
    def understood(self) -> float:
        """Sum of the used hints' confidence over the clauses that said something (0..1)."""
        if not self.clauses:
            return 0.0
        return sum(c.confidence for c in self.used) / len(self.clauses)

    def explain(self) -> str:
        lines = [f'  {i + 1}. "{c.text}" -> {c.describe()}' for i, c in enumerate(self.clauses)]
        lines.append(f"  understood {len(self.used)} of {len(self.clauses)} clauses "
                     f"(share {self.understood:.2f})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"understood": self.understood, "clauses": [asdict(c) for c in self.clauses]}


# --- the front end ----------------------------------------------------------------------------


def _phrase_table(words: Dict[str, Tuple[str, ...]], kind: str) -> Dict[Tuple[str, ...], tuple]:
    table = {}
    for name, phrases in words.items():
        for p in phrases:
            table[tuple(p.replace("-", " ").split())] = (kind, name)
            table[tuple(p.split())] = (kind, name)
    return table


_TABLE = {**_phrase_table(COLOUR_WORDS, "colour"), **_phrase_table(CLASS_WORDS, "class")}
_LONGEST = max(len(k) for k in _TABLE)


def _singular(word: str) -> str:
    for end, repl in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"), ("ses", "s"),
                      ("s", "")):
        if word.endswith(end) and len(word) > len(end) + 2:
            return word[: -len(end)] + repl
    return word


def _lookup(words: Sequence[str], start: int) -> Tuple[int, Optional[tuple]]:
    """The longest lexicon phrase at ``start``: (its length, (kind, name)) or (0, None).

    A hyphenated word not in the lexicon whose last part is a colour ("grass-green",
    "pitch-black") is that colour: the head names the hue, the rest refines it."""
    if start >= len(words):
        return 0, None
    for n in range(min(_LONGEST, len(words) - start), 0, -1):
        span = words[start:start + n]
        for key in (tuple(span), tuple(span[:-1]) + (_singular(span[-1]),)):
            if key in _TABLE:
                return n, _TABLE[key]
    head = words[start].rsplit("-", 1)[-1]
    if head != words[start] and _TABLE.get((head,), ("",))[0] == "colour":
        return 1, _TABLE[(head,)]
    return 0, None


@dataclass
class _Fragment:
    words: List[str]
    joined_by: str = ""  # the boundary word before it ("and", ...)


class LanguageFrontEnd:
    """Utterances -> :class:`Understanding`; ``encoder`` (a FrozenTextEncoder) matches words
    outside the lexicon, and is optional (without it they are reported as unknown)."""

    def __init__(self, encoder=None):
        self.encoder = encoder
        self._prototypes = None  # ([P, Dt] unit vectors, class of each row)
        self._phrase_cache: Dict[str, Tuple[Optional[str], float, float]] = {}
        self._colour_prototypes = None
        self._colour_cache: Dict[str, Tuple[Optional[str], float]] = {}

    # --- public -------------------------------------------------------------------------------

    def forget(self) -> None:
        """Drop the cached encoder matches of words outside the lexicon (for timing)."""
        self._phrase_cache.clear()
        self._colour_cache.clear()

    def understand(self, text: str) -> Understanding:
        return self.understand_many([text])[0]

    def understand_many(self, texts: Sequence[str]) -> List[Understanding]:
        """One :class:`Understanding` per text; words outside the lexicon are encoded in one
        batch."""
        if len(self._phrase_cache) + len(self._colour_cache) > MAX_CACHED_WORDS:
            self.forget()  # a long-running node hears unbounded vocabulary
        out = []
        for text in texts:
            fragments = _merge(_fragments(text))
            clauses = [self._clause(f) for f in fragments]
            _inherit_directions(fragments, clauses)
            out.append(Understanding(text, clauses))
        pending = [c for u in out for c in u.clauses if c.reason == "?encoder"]
        if pending:
            self._match_by_encoder(pending)
        uncoloured = [c for u in out for c in u.clauses
                      if c.hint is not None and c.colour is None and c.unknown]
        if uncoloured:
            self._match_colours(uncoloured)
        for c in pending:
            if c.reason == "?encoder":
                c.reason = f'"{c.unknown}" names nothing the map knows'
                c.direction = None
        return out

    # --- one clause ---------------------------------------------------------------------------

    def _clause(self, frag: _Fragment) -> Clause:
        words = frag.words
        clause = Clause(" ".join(words))
        heading = [w for w in words if w in HEADING_WORDS]
        relation = _relation(words)
        colour, label, extra, rest = _objects(words)
        if relation is None:
            if heading:
                clause.reason = f'"{heading[0]}" needs a heading; only compass directions are used'
                return clause
            if label is None and colour is None and not rest:
                clause.reason = "names no object and no direction"
                return clause
            clause.reason = "no compass direction"
            clause.colour, clause.label = colour, label
            return clause
        direction, conf, note = relation
        if direction is None:
            clause.reason = note
            return clause
        clause.direction, clause.colour, clause.label = direction, colour, label
        clause.confidence = conf
        clause.reason = note
        if label is None:
            if rest:
                clause.unknown = rest  # matched by the encoder, in one batch per call
                clause.reason = "?encoder"
            else:
                clause.reason = "names no object" if colour is None else "names only a colour"
                clause.direction = None
            return clause
        if extra:
            clause.confidence *= 0.5
            clause.reason = (clause.reason + "; " if clause.reason else "") + \
                f"also names {', '.join(extra)}: used the first"
        clause.matched_by = "lexicon"
        clause.hint = canonical_hint(direction, colour, label)
        if colour is None and rest:
            clause.unknown = rest  # perhaps a colour word: matched by the encoder
        return clause

    # --- the encoder's similarity -------------------------------------------------------------

    def _match_by_encoder(self, clauses: List[Clause]) -> None:
        if self.encoder is None:
            return
        if self._prototypes is None:
            self._prototypes = self._table_vectors(CLASS_WORDS, "a {}")
        todo = sorted({c.unknown for c in clauses} - set(self._phrase_cache))
        for phrase, ((l1, s1), (_, s2)) in zip(todo, self._ranked(todo, self._prototypes,
                                                                  "a {}")):
            self._phrase_cache[phrase] = (l1, s1, s1 - s2)
        for c in clauses:
            label, sim, margin = self._phrase_cache[c.unknown]
            if sim < ENCODER_MIN_SIMILARITY or margin < ENCODER_MIN_MARGIN:
                c.reason = (f'"{c.unknown}" is not a class the map knows '
                            f"(closest {label}, similarity {sim:.2f})")
                c.direction = None
                continue
            c.label, c.matched_by = label, "encoder"
            c.confidence *= min(0.9, 0.5 + (sim - ENCODER_MIN_SIMILARITY) * 2.0)
            c.reason = f'"{c.unknown}" read as {label} (similarity {sim:.2f})'
            c.hint = canonical_hint(c.direction, c.colour, label)

    def _table_vectors(self, table: Dict[str, Tuple[str, ...]], frame: str):
        """(pooled unit vectors of every word of a lexicon table, the name of each row)."""
        pairs = [(name, w) for name, words in table.items() for w in words]
        return self.encoder.encode_pooled([frame.format(w) for _, w in pairs]), \
            [name for name, _ in pairs]

    def _ranked(self, phrases: Sequence[str], prototypes, frame: str):
        """Per phrase, the two names of a table with the best cosine similarity, best first."""
        if not phrases:
            return []
        vecs, names = prototypes
        sims = self.encoder.encode_pooled([frame.format(p) for p in phrases]) @ vecs.T
        out = []
        for row in sims.tolist():
            best: Dict[str, float] = {}
            for sim, name in zip(row, names):
                best[name] = max(best.get(name, -1.0), sim)
            out.append(sorted(best.items(), key=lambda kv: -kv[1])[:2])
        return out

    def _match_colours(self, clauses: List[Clause]) -> None:
        """A colour for hints whose words outside the lexicon include one ("emerald")."""
        if self.encoder is None:
            return
        if self._colour_prototypes is None:
            self._colour_prototypes = self._table_vectors(COLOUR_WORDS, "a {} colour")
        words = sorted({w for c in clauses for w in c.unknown.split()}
                       - set(self._colour_cache))
        for word, ((c1, s1), (_, s2)) in zip(words, self._ranked(words, self._colour_prototypes,
                                                                 "a {} colour")):
            self._colour_cache[word] = (c1 if s1 >= COLOUR_MIN_SIMILARITY
                                        and s1 - s2 >= COLOUR_MIN_MARGIN else None, s1)
        for c in clauses:
            found = [(self._colour_cache[w], w) for w in c.unknown.split()
                     if self._colour_cache[w][0] is not None]
            if found:
                (colour, sim), word = max(found, key=lambda f: f[0][1])
                c.colour, c.confidence = colour, 0.9 * c.confidence
                c.reason = f'"{word}" read as {colour} (similarity {sim:.2f})'
                c.hint = canonical_hint(c.direction, colour, c.label)


@dataclass
class Reading:
    """What the models get from one utterance: hint sentences and the share understood."""

    understanding: Understanding
    hints: List[str]
    informative: float  # 0..1, the share understood: scales the scores the consensus weighs

    @property
    def evidence(self) -> float:
        """0..1, what the published covariance trusts: the share understood, times the share
        of a full description's hints the models got (fewer hints match more places)."""
        return self.informative * min(1.0, len(self.hints) / NUM_MENTIONED) \
            if self.understanding.used else 0.0


def read_texts(front_end: "LanguageFrontEnd", texts: Sequence[str],
               max_hints: int) -> List[Reading]:
    """Hints for the models from each text; raises QueryRejected for a text of more than
    :data:`MAX_CLAUSES` clauses.

    At most ``max_hints`` hints are used (the rest are reported as left out). A text of
    which nothing is understood keeps its own sentences, at most ``max_hints``, with
    ``informative`` 0: the models still answer, and the published covariance is as wide
    as the scores allow (LOW_CONFIDENCE).
    """
    from ..networks.text_encoder import split_sentences
    from .query_text import QueryRejected

    out = []
    for u in front_end.understand_many(texts):
        if len(u.clauses) > MAX_CLAUSES:
            raise QueryRejected("QUERY_TOO_LONG", f"the query has {len(u.clauses)} clauses; at "
                                                  f"most {MAX_CLAUSES} are read")
        for c in u.used[max_hints:]:
            c.hint, c.reason = None, f"beyond the {max_hints} hints used"
        if u.used:
            out.append(Reading(u, u.hints, u.understood))
        else:
            out.append(Reading(u, split_sentences(u.text)[:max_hints] or [u.text], 0.0))
    return out


# --- splitting --------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("`", "'").replace("on-top", "on top")
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text)
    text = _COLOURED.sub(r"\1", text)  # "sand-coloured" -> "sand"
    return _ISH.sub(r"\1", text)  # "darkish green" -> "dark green"


def _fragments(text: str) -> List[_Fragment]:
    """Pieces of the utterance, cut at punctuation, boundary words and new subjects."""
    out: List[_Fragment] = []
    for segment in _PUNCT.split(_normalise(text)):
        words = [w for w in _WORD.findall(segment)]
        words = _drop_fillers(words)
        current: List[str] = []
        joined = ""
        for i, w in enumerate(words):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            prev = words[i - 1] if i else ""
            starts = ((w in _BOUNDARY and not (w == "next" and nxt == "to"))
                      or (w == "there" and nxt in ("is", "are", "was"))
                      or (w in ("i", "we") and nxt in _SUBJECT_VERBS
                          and prev not in ("where", "that", "than", "as"))
                      or (w == "my" and nxt in ("location", "position", "pose")
                          and prev not in ("of", "from", "to"))
                      or (w == "the" and nxt == "pose" and prev not in ("of", "from", "to"))
                      or w == "looking"
                      # a new noun phrase right after a finished one: "... on the meadow
                      # a building is to my east", "... south of where i am a bin is ..."
                      or (w in ("a", "an", "the", "some") and current
                          and (prev in ("me", "us", "am", "are")
                               or _class_at(current, len(current) - 1))))
            if starts and current:
                out.append(_Fragment(current, joined))
                current, joined = [], ""
            if w in _BOUNDARY and not (w == "next" and nxt == "to"):
                joined = w
                continue
            current.append(w)
        if current:
            out.append(_Fragment(current, joined))
    return [f for f in out
            if any(w not in _STOP for w in f.words) or _relation(f.words) is not None]


_HEDGES = frozenset(["think", "guess", "believe", "reckon", "mean", "suppose", "suspect"])
_RIGHT_BEFORE = frozenset(["on", "in", "at", "next", "by", "above", "under", "underneath",
                           "beneath", "below", "beside", "there", "here", "near", "atop",
                           "outside", "inside", "over", "now", "where", "so", "okay", "ok",
                           "well", "then", "and", "um", "uh", "i", "we"])


def _drop_fillers(words: List[str]) -> List[str]:
    """Without fillers ("um", "i think", "so" at the start, "right" as in "right on top")."""
    out = []
    for i, w in enumerate(words):
        prev = words[i - 1] if i else ""
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in _FILLERS and not (w == "like" and prev in ("looks", "look", "looking")):
            continue
        if (w in ("i", "we") and nxt in _HEDGES) or (w == "right" and nxt in _RIGHT_BEFORE):
            continue
        if w == "so" and not out:
            continue
        out.append(w)
    return out


def _class_at(words: Sequence[str], i: int) -> bool:
    hit = _lookup(words, i)[1]
    return hit is not None and hit[0] == "class"


def _has_object(words: Sequence[str]) -> bool:
    return any(_class_at(words, i) for i in range(len(words)))


def _has_direction(words: Sequence[str]) -> bool:
    # _relation finds every compass word; a heading word is a direction too, if unusable
    return any(w in HEADING_WORDS for w in words) or _relation(words) is not None


def _merge(fragments: List[_Fragment]) -> List[_Fragment]:
    """Join a direction without an object to a neighbouring object without a direction."""
    out: List[_Fragment] = []
    for f in fragments:
        if out:
            prev = out[-1]
            a_dir, a_obj = _has_direction(prev.words), _has_object(prev.words)
            b_dir, b_obj = _has_direction(f.words), _has_object(f.words)
            # only a bare direction ("to my south") joins: one naming an unknown thing does not
            bare_a, bare_b = not _objects(prev.words)[3], not _objects(f.words)[3]
            if (a_dir and not a_obj and bare_a and b_obj and not b_dir) or \
                    (a_obj and not a_dir and b_dir and not b_obj and bare_b):
                out[-1] = _Fragment(prev.words + f.words, prev.joined_by)
                continue
        out.append(f)
    return out


def _inherit_directions(fragments: List[_Fragment], clauses: List[Clause]) -> None:
    """"north of a building and a pole": the pole takes the building's relation."""
    for i in range(1, len(clauses)):
        c, prev = clauses[i], clauses[i - 1]
        if (c.reason == "no compass direction" and c.label is not None
                and fragments[i].joined_by == "and" and prev.hint is not None):
            c.direction, c.confidence = prev.direction, 0.8 * prev.confidence
            c.reason = f"direction taken from the clause before ({prev.direction})"
            c.matched_by = "lexicon"
            c.hint = canonical_hint(c.direction, c.colour, c.label)


# --- relations and objects --------------------------------------------------------------------


def _relation(words: Sequence[str]) -> Optional[Tuple[Optional[str], float, str]]:
    """(direction of the pose relative to the object, confidence, note), or None if the
    clause states no relation. A direction of None means a relation that cannot be used."""
    n = len(words)
    for i, w in enumerate(words):
        diag = _DIAGONALS.get(w.replace("-", ""))
        compass = COMPASS.get(w) or diag
        if compass is None:
            continue
        conf, note = (0.5, f'"{w}" is between two directions: used {compass}') if diag else \
            (1.0, "")
        if diag is None and i + 1 < n and COMPASS.get(words[i + 1]) in ("east", "west") \
                and compass in ("north", "south"):
            conf, note = 0.5, f'"{w} {words[i + 1]}" is between two directions: used {compass}'
        before, after = words[:i], words[i + 1:]
        # the object is in that direction from me: "to my south", "south of me", "on my south"
        object_there = (bool(before) and before[-1] in ("my", "our")) or \
            (len(after) >= 2 and after[0] in ("of", "from") and after[1] in _SELF) or \
            (len(after) >= 3 and after[0] == "of" and after[1] in ("my", "the", "where")
             and after[2] in ("position", "pose", "location", "i", "we"))
        if not object_there and not (after and after[0] in ("of", "from")):
            # "to the north there is a bin", "a bin stands north": the object is there,
            # unless I am the subject ("I'm to the north", "I am north")
            object_there = not any(w in _SUBJECT_SELF for w in before)
        if object_there:
            return _OPPOSITE[compass], conf, note
        if _object_subject(before):
            return None, 0.0, "relates two objects, not where you are"
        return compass, conf, note
    return _on_top(words)


_SUBJECT_SELF = frozenset(["i", "we", "pose", "position", "location", "standing", "stand",
                           "located"])


def _object_subject(before: Sequence[str]) -> bool:
    if any(w in ("i", "we", "pose") for w in before):
        return False
    return _has_object(list(before))


def _on_top(words: Sequence[str]) -> Optional[Tuple[Optional[str], float, str]]:
    if any(w in HEADING_WORDS for w in words):
        return None
    text = " " + " ".join(words) + " "
    for phrase in (" under me ", " beneath me ", " below me ", " underneath me ", " under my ",
                   " beneath my ", " below my ", " underneath my "):
        if phrase in text:
            return "on-top", 1.0, ""
    self_first = bool(words) and words[0] in ("i", "we", "standing", "stand", "walking",
                                              "sitting", "waiting", "located")
    if " on top of " in text or " atop " in text or (
            self_first and any(f" {v} " in text for v in ("on", "in", "inside", "under",
                                                          "above", "over", "atop"))):
        return "on-top", 1.0, ""
    if " the pose is on " in text or text.startswith(" on ") or " standing on " in text:
        return "on-top", 1.0, ""
    if self_first and " at " in text:
        return "on-top", 0.7, '"at" read as on-top'
    return None


def _objects(words: Sequence[str]):
    """(colour, class, other classes named, content words not in the lexicon)."""
    colour, label, extra, rest = None, None, [], []
    i = 0
    while i < len(words):
        n, hit = _lookup(words, i)
        if hit is None:
            w = words[i]
            if w not in _STOP and w not in _FILLERS and w not in COMPASS and \
                    w.replace("-", "") not in _DIAGONALS and w not in HEADING_WORDS:
                rest.append(w)
            i += 1
            continue
        kind, name = hit
        if kind == "colour":
            colour = colour or name
        elif label is None:
            label = name
        elif name != label:
            extra.append(name)
        i += n
    return colour, label, extra, " ".join(rest)
