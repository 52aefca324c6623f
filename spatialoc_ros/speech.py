"""Speech in and out, offline: espeak-ng speaks a description, pocketsphinx hears one.

* :func:`synthesize` runs ``espeak-ng`` (a Debian package) and writes a 16 kHz mono
  16-bit WAV, the format speech recognisers take.
* :class:`Transcriber` decodes speech with pocketsphinx's en-us acoustic model and
  pronouncing dictionary, which ship inside the ``pocketsphinx`` wheel (nothing is
  downloaded). Its default language model is a small trigram model built when the
  transcriber is made, from sentences about where someone stands: the map's
  directions, colours and classes (``data.constants``) in the ways people say them,
  plus everyday words for things seen from a street (:data:`EVERYDAY_THINGS`). Any word
  sequence over that vocabulary stays possible (the model backs off to unigrams), so
  free speech is heard, not matched against templates. ``language_model="general"``
  uses the wheel's general English model instead (any English word, far more errors
  on descriptions).
* :func:`spoken_description` turns a templated description ("The pose is north of a
  gray building. ...") into what a person would say ("I'm north of a gray building
  and ..."); :func:`word_error_rate` compares a transcript with what was said.

No ROS import here: the command line, the tests and the ROS nodes share it.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
import time
import wave
import zlib
from math import gcd
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import SpatialocError

SAMPLE_RATE = 16000  # what the acoustic model was trained on
LANGUAGE_MODELS = ("descriptions", "general")
NOISE_FLOOR_SNR_DB = 25.0  # see with_noise_floor
_MIN_NOISE = 2.0  # standard deviation of the quietest floor, in 16-bit steps (-84 dBFS)

# Map names that are said differently from how they are written (hyphens become spaces).
_SPOKEN_FORMS = {"smallpole": "small pole", "on-top": "on top"}

# Everyday words beyond the map's class and colour names, for free speech: things seen from
# a street (synonyms of the classes among them: "post", "signal", "tree"), colours and sizes,
# and how people place themselves. They enter the language model in the frames below.
EVERYDAY_THINGS = """
    post pillar column mast signal traffic signal street light lamp post sign street sign
    stop sign bus stop bin trash can garbage can rubbish bin container dumpster kiosk bench
    house shop store office block tower church school station shed tree bush hedge grass
    lawn park field plant street lane path pavement curb crossing crosswalk corner junction
    intersection parking lot car bus bike bicycle truck van stairs door window gate railing
    barrier bollard rail track river
""".split()
EVERYDAY_PLURALS = "posts signs trees bushes plants houses shops cars bins steps lights".split()
EVERYDAY_ADJECTIVES = """
    white red blue yellow orange brown dark light pale grey silver big small tall short long
    wide old new little large
""".split()
EVERYDAY_RELATIONS = [
    "next to", "near", "close to", "beside", "behind", "in front of", "opposite", "across from",
    "past", "at", "by", "facing", "on the corner of", "at the end of", "in the middle of",
]
EVERYDAY_PLACES = [
    "to my left", "to my right", "on my left", "on my right", "behind me", "in front of me",
    "next to me", "near me", "across the street", "to the north", "to my east",
    "to the south", "to my west", "northeast of me", "northwest of me", "southeast of me",
    "southwest of me",
]
EVERYDAY_SENTENCES = [
    "i'm standing here", "i think i'm", "i can see", "i see", "we are", "it's", "there are",
    "just", "also", "about ten meters", "a few steps", "a little", "somewhere", "where am i",
]

# Frames of the corpus: {d} a direction, {o} "colour class" or a bare class.
_FRAMES = [
    "the pose is {d} of a {o}",
    "i'm {d} of a {o}",
    "i'm {d} of the {o}",
    "i am {d} of a {o}",
    "i'm standing {d} of a {o}",
    "and {d} of a {o}",
    "there's a {o} to my {d}",
    "there is a {o} to the {d}",
    "a {o} is {d} of me",
    "i see a {o} to my {d}",
]
_ON_FRAMES = [
    "the pose is on top of a {o}",
    "i'm on top of a {o}",
    "i'm on a {o}",
    "i'm standing on the {o}",
    "and on a {o}",
]
_NEAR_FRAMES = [
    "i'm next to a {o}",
    "i'm near a {o}",
    "there's a {o} behind me",
    "there's a {o} in front of me",
    "there's a {o} on my left",
    "there's a {o} on my right",
    "i'm close to the {o}",
    "i'm between a {o} and a {o2}",
]


def _spoken(word: str) -> str:
    """A map name as it is said: ``dark-green`` -> ``dark green``, ``smallpole`` -> ``small
    pole``."""
    return _SPOKEN_FORMS.get(word, word.replace("-", " "))


# --------------------------------------------------------------------------- audio


def espeak_path() -> str:
    """The espeak-ng executable, or a SpatialocError saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpatialocError("espeak-ng is not installed (apt-get install espeak-ng, or "
                             "`make install`)")
    return exe


def synthesize(text: str, wav_path, voice: str = "en-us", speed_wpm: int = 150) -> Path:
    """Speak ``text`` with espeak-ng into ``wav_path``: 16 kHz, mono, 16-bit PCM."""
    text = " ".join(str(text).split())
    if not text:
        raise SpatialocError("nothing to say: the text is empty")
    exe = espeak_path()
    # espeak-ng writes 22050 Hz WAV on stdout; the text goes in on stdin (no option parsing).
    proc = subprocess.run([exe, "-v", voice, "-s", str(int(speed_wpm)), "--stdout"],
                          input=text.encode("utf-8"), capture_output=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        detail = " ".join(proc.stderr.decode("utf-8", "replace").split()) or "no audio"
        raise SpatialocError(f"espeak-ng failed (voice {voice!r}): {detail}")
    samples, rate = _parse_wav(proc.stdout)
    out = Path(wav_path)
    write_wav(out, resample(samples, rate, SAMPLE_RATE), SAMPLE_RATE)
    return out


def _parse_wav(data: bytes) -> Tuple[np.ndarray, int]:
    """Samples and rate of a 16-bit PCM WAV in memory.

    espeak-ng streaming to stdout leaves the RIFF sizes unset (0xFFFFFFFF), which the
    ``wave`` module rejects; the ``data`` chunk then simply runs to the end.
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpatialocError("not a WAV file (no RIFF/WAVE header)")
    pos, rate, channels, bits, samples = 12, None, 1, 16, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            fmt = int.from_bytes(data[body:body + 2], "little")
            channels = int.from_bytes(data[body + 2:body + 4], "little")
            rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            if fmt not in (1, 0xFFFE) or bits != 16:
                raise SpatialocError(f"WAV is not 16-bit PCM (format {fmt}, {bits} bits)")
        elif cid == b"data":
            end = len(data) if size in (0, 0xFFFFFFFF) or body + size > len(data) else body + size
            raw = data[body:end]
            samples = np.frombuffer(raw[:len(raw) // 2 * 2], dtype="<i2")
            break
        pos = body + size + (size & 1)
    if rate is None or samples is None:
        raise SpatialocError("WAV file without a fmt or data chunk")
    if channels > 1:
        samples = samples[:len(samples) // channels * channels].reshape(-1, channels)
        samples = samples.astype(np.int32).mean(axis=1).astype(np.int16)
    return samples.astype(np.int16), rate


def read_wav(path) -> Tuple[np.ndarray, int]:
    """(int16 mono samples, sample rate) of a 16-bit PCM WAV file; channels are averaged."""
    return _parse_wav(Path(path).read_bytes())


def write_wav(path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write int16 mono samples as a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def resample(samples: np.ndarray, rate_from: int, rate_to: int = SAMPLE_RATE) -> np.ndarray:
    """int16 samples at ``rate_to`` (polyphase filter; 22050 -> 16000 is 320/441)."""
    samples = np.asarray(samples)
    if rate_from == rate_to:
        return samples.astype(np.int16)
    from scipy.signal import resample_poly

    g = gcd(int(rate_from), int(rate_to))
    out = resample_poly(samples.astype(np.float32), int(rate_to) // g, int(rate_from) // g)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def with_noise_floor(samples: np.ndarray, snr_db: Optional[float]) -> np.ndarray:
    """``samples`` plus white noise ``snr_db`` below their RMS (``None``: unchanged).

    Synthetic speech has stretches of exact digital silence, which no microphone
    records; the acoustic model, trained on recordings, then hears words in them
    (espeak-ng descriptions: about one word in five wrong without the floor, almost
    none with it at 25 dB). A recording's own noise is usually louder than this floor,
    so it changes little there. The noise is seeded by the audio, so a transcript is
    reproducible. Its level is at least ``_MIN_NOISE``, so that all-zero input is heard
    as the silence it is.
    """
    samples = np.asarray(samples, dtype=np.int16)
    if snr_db is None or samples.size == 0:
        return samples
    x = samples.astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x)))
    std = max(rms * 10.0 ** (-snr_db / 20.0), _MIN_NOISE)
    noise = np.random.default_rng(zlib.crc32(samples.tobytes())).normal(0.0, std, x.size)
    return np.clip(np.rint(x + noise), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- language model


def description_corpus() -> List[str]:
    """Sentences of the descriptions' language model: every direction x colour x class of the
    map vocabulary (``data.constants``) in the frames people use, then the everyday words
    (:data:`EVERYDAY_THINGS` ...) in frames of their own."""
    from .data.constants import CLASS_NAMES, COLOR_NAMES, DIRECTIONS

    directions = [_spoken(d) for d in DIRECTIONS if d != "on-top"]
    colours = sorted({_spoken(c) for c in COLOR_NAMES})
    classes = [_spoken(c) for c in CLASS_NAMES]
    objects = [f"{c} {k}" for c in colours for k in classes] + classes
    lines = []
    for i, o in enumerate(objects):
        for j, d in enumerate(directions):
            # each object with every direction, in a frame that rotates with both
            lines.append(_FRAMES[(i + j) % len(_FRAMES)].format(d=d, o=o))
        lines.append(_ON_FRAMES[i % len(_ON_FRAMES)].format(o=o))
        lines.append(_NEAR_FRAMES[i % len(_NEAR_FRAMES)].format(
            o=o, o2=objects[(i * 7 + 3) % len(objects)]))
    for frame in _FRAMES:  # every frame with every direction, for its word order
        lines += [frame.format(d=d, o=objects[0]) for d in directions]
    # everyday things: each with a rotating adjective, relation and place
    adjectives = EVERYDAY_ADJECTIVES + colours
    for i, thing in enumerate(EVERYDAY_THINGS + classes):
        adj = adjectives[i % len(adjectives)]
        rel = EVERYDAY_RELATIONS[i % len(EVERYDAY_RELATIONS)]
        place = EVERYDAY_PLACES[i % len(EVERYDAY_PLACES)]
        lines += [f"i'm {rel} a {adj} {thing}", f"there's a {thing} {place}",
                  f"i'm {directions[i % len(directions)]} of a {thing}"]
    for i, things in enumerate(EVERYDAY_PLURALS):
        lines += [f"there are some {things} {EVERYDAY_PLACES[i % len(EVERYDAY_PLACES)]}",
                  f"i'm {EVERYDAY_RELATIONS[i % len(EVERYDAY_RELATIONS)]} some {things}"]
    lines += EVERYDAY_SENTENCES
    return lines


def _lm_text(lines: Iterable[str], dictionary_has) -> Tuple[str, List[str]]:
    """ARPA text of a trigram model over ``lines``; words the dictionary lacks are left out
    (and returned)."""
    from pocketsphinx.lm import ArpaBoLM

    missing, kept = set(), []
    for line in lines:
        words = line.lower().split()
        missing.update(w for w in words if not dictionary_has(w))
        words = [w for w in words if w not in missing]
        if words:
            kept.append(" ".join(words))
    lm = ArpaBoLM(text="\n".join(kept), add_start=True, discount_mass=0.5)
    lm.compute()
    buf = io.StringIO()
    lm.write(buf)
    return buf.getvalue(), sorted(missing)


# --------------------------------------------------------------------------- recognition


class Transcriber:
    """Offline speech recognition with the models inside the ``pocketsphinx`` wheel.

    Made once (about a second: the dictionary, the acoustic model, the language model
    built from :func:`description_corpus`), then :meth:`transcribe` as often as needed.
    """

    def __init__(self, language_model: str = "descriptions",
                 extra_sentences: Sequence[str] = (), options: Optional[dict] = None,
                 noise_floor_snr_db: Optional[float] = NOISE_FLOOR_SNR_DB):
        if language_model not in LANGUAGE_MODELS:
            raise SpatialocError(f"language model {language_model!r}: one of "
                                 f"{', '.join(LANGUAGE_MODELS)}")
        try:
            from pocketsphinx import Config, Decoder
        except ImportError as exc:
            raise SpatialocError(f"pocketsphinx is not installed ({exc}); `make install` "
                                 "installs it") from None
        self.language_model = language_model
        self.noise_floor_snr_db = noise_floor_snr_db
        started = time.monotonic()
        config = Config(loglevel="FATAL", samprate=SAMPLE_RATE)
        for key, value in (options or {}).items():
            config[key] = value
        self.dropped_words: List[str] = []
        if language_model == "descriptions":
            config["lm"] = None  # the general model is not loaded; the one built here is
        self.decoder = Decoder(config)
        if language_model == "descriptions":
            lines = description_corpus() + list(extra_sentences)
            text, self.dropped_words = _lm_text(
                lines, lambda w: self.decoder.lookup_word(w) is not None)
            with tempfile.TemporaryDirectory() as tmp:
                arpa = Path(tmp) / "descriptions.lm"
                arpa.write_text(text, encoding="utf-8")
                self.decoder.add_lm_file("descriptions", str(arpa))
            self.decoder.activate_search("descriptions")
        self.load_s = time.monotonic() - started

    def transcribe(self, audio: Union[str, Path, np.ndarray],
                   sample_rate: Optional[int] = None) -> str:
        """What was said, as lower-case words without punctuation ("" for silence).

        ``audio``: a WAV file (16-bit PCM, any rate, channels averaged) or int16 samples at
        ``sample_rate`` (default 16 kHz).
        """
        if isinstance(audio, (str, Path)):
            samples, rate = read_wav(audio)
        else:
            samples, rate = np.asarray(audio), int(sample_rate or SAMPLE_RATE)
            if samples.ndim != 1:
                raise SpatialocError(f"audio must be one channel of samples, got shape "
                                     f"{samples.shape}")
        samples = with_noise_floor(resample(samples, rate, SAMPLE_RATE), self.noise_floor_snr_db)
        d = self.decoder
        d.start_utt()
        d.process_raw(samples.tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return normalize_words(hyp.hypstr if hyp is not None else "")


# --------------------------------------------------------------------------- text


def normalize_words(text: str) -> str:
    """Lower case, words only (apostrophes inside words kept; hyphens split), single spaces."""
    text = str(text).lower().replace("-", " ")
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text))


_HINT = re.compile(r"^\s*the pose is\s+(?P<dir>[\w-]+)\s+of\s+(?P<rest>.+?)\s*[.!?]?\s*$",
                   re.IGNORECASE)


def spoken_description(text_or_hints: Union[str, Sequence[str]], per_sentence: int = 2) -> str:
    """A templated description as a person says it.

    Each hint "The pose is DIR of a COLOUR CLASS." becomes "DIR of a COLOUR CLASS"
    (``on-top`` as "on top", ``smallpole`` as "small pole"), ``per_sentence`` of them
    to a sentence: "I'm north of a gray building and east of a black pole." Sentences
    that do not follow the template are kept as they are.
    """
    if isinstance(text_or_hints, str):
        from .networks.text_encoder import split_sentences

        hints = split_sentences(text_or_hints)
    else:
        hints = list(text_or_hints)
    facts: List[str] = []
    kept: List[str] = []
    for h in hints:
        m = _HINT.match(h)
        if m is None:
            kept.append(h.strip())
            continue
        rest = " ".join(_spoken(w) for w in m.group("rest").split())
        facts.append(f"{_spoken(m.group('dir').lower())} of {rest}")
    sentences = []
    for i in range(0, len(facts), max(1, per_sentence)):
        sentences.append("I'm " + " and ".join(facts[i:i + max(1, per_sentence)]) + ".")
    return " ".join(sentences + kept)


# Spellings of one spoken word; a recogniser cannot tell them apart.
_SAME_WORD = {"grey": "gray", "kerb": "curb", "metres": "meters", "lamppost": "lamp post"}


def comparable_words(text: str) -> List[str]:
    """Words of ``text`` for a word error rate: normalised, one spelling per spoken word."""
    words = []
    for w in normalize_words(text).split():
        words += _SAME_WORD.get(w, _spoken(w)).split()
    return words


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, on :func:`comparable_words`."""
    ref, hyp = comparable_words(reference), comparable_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)
