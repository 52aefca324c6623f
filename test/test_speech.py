"""Speech in the loop: espeak-ng speaks a description, pocketsphinx (its model from the wheel)
transcribes it, and the localizer node answers the transcript over DDS.

Tests that speak need the espeak-ng Debian package (`make install` installs it) and are
skipped without it; the rest run anywhere.
"""
import json
import shutil
import subprocess
import sys
import time
import wave

import numpy as np
import pytest

from spatialoc_ros import cli, speech
from spatialoc_ros.errors import SpatialocError

EXAMPLE = ("I'm east of the grey building and north of a grey post. "
           "There's a black traffic signal to my east.")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng; "
                                         "`make install` does it)")


@pytest.fixture(scope="module")
def transcriber():
    return speech.Transcriber()


# --- text and audio helpers --------------------------------------------------------------------


def test_spoken_description_says_the_hints_as_a_person_would():
    text = ("The pose is north of a gray building. The pose is on-top of a dark-green road. "
            "The pose is west of a gray smallpole.")
    assert speech.spoken_description(text) == (
        "I'm north of a gray building and on top of a dark green road. "
        "I'm west of a gray small pole.")
    assert speech.spoken_description(["The pose is east of a black pole."]) == \
        "I'm east of a black pole."


def test_word_error_rate_counts_edits_and_treats_spellings_of_one_word_alike():
    assert speech.word_error_rate("I'm north of a grey building.",
                                  "i'm north of a gray building") == 0.0
    assert speech.word_error_rate("a dark-green road", "a dark green road") == 0.0
    assert speech.word_error_rate("north of a pole", "north of pole") == 0.25  # a deletion
    assert speech.word_error_rate("north of a pole", "south of a big pole") == 0.5
    assert speech.normalize_words("There's a POLE, to my east!") == "there's a pole to my east"


def test_a_streamed_wav_header_is_read_and_resampled(tmp_path):
    # espeak-ng --stdout leaves the RIFF and data sizes at 0xFFFFFFFF
    rate = 22050
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype("<i2")
    path = tmp_path / "tone.wav"
    speech.write_wav(path, tone, rate)
    data = bytearray(path.read_bytes())
    data[4:8] = b"\xff\xff\xff\xff"
    data[40:44] = b"\xff\xff\xff\xff"
    samples, got_rate = speech._parse_wav(bytes(data))
    assert got_rate == rate and np.array_equal(samples, tone)
    at16k = speech.resample(samples, rate, speech.SAMPLE_RATE)
    assert at16k.dtype == np.int16 and abs(len(at16k) - speech.SAMPLE_RATE) <= 1
    with pytest.raises(SpatialocError, match="not a WAV"):
        speech._parse_wav(b"hello world, not audio")


def test_the_noise_floor_is_quiet_and_reproducible():
    x = (3000 * np.sin(np.arange(16000) / 5.0)).astype(np.int16)
    a, b = speech.with_noise_floor(x, 25.0), speech.with_noise_floor(x, 25.0)
    assert np.array_equal(a, b) and not np.array_equal(a, x)
    noise = a.astype(float) - x
    snr = 20 * np.log10(np.sqrt(np.mean(x.astype(float) ** 2)) / np.sqrt(np.mean(noise ** 2)))
    assert 24.0 < snr < 26.0
    assert np.array_equal(speech.with_noise_floor(x, None), x)
    quiet = speech.with_noise_floor(np.zeros(16000, np.int16), 25.0)  # no exact zeros left
    assert 1.0 < quiet.std() < 3.0


def test_the_language_model_covers_the_map_vocabulary(transcriber):
    from spatialoc_ros.data.constants import CLASS_NAMES, COLOR_NAMES, DIRECTIONS

    corpus = " ".join(speech.description_corpus())
    for name in CLASS_NAMES + COLOR_NAMES + DIRECTIONS:
        assert speech._spoken(name) in corpus, name
    assert transcriber.dropped_words == []  # every word has a pronunciation
    assert transcriber.transcribe(np.zeros(8000, np.int16)) == ""  # silence: no words


def test_without_espeak_ng_one_clear_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(SpatialocError, match="espeak-ng is not installed"):
        speech.synthesize("north of a pole", tmp_path / "x.wav")
    assert cli.main(["speak", "north of a pole", "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "espeak-ng is not installed" in err


# --- espeak-ng -> pocketsphinx -----------------------------------------------------------------


@needs_espeak
def test_synthesize_writes_16_khz_mono_16_bit(tmp_path):
    path = speech.synthesize("I'm north of a gray building.", tmp_path / "a.wav")
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert 1.0 < w.getnframes() / 16000 < 5.0
    with pytest.raises(SpatialocError, match="espeak-ng failed"):
        speech.synthesize("hello", tmp_path / "b.wav", voice="xx-nope")


@needs_espeak
def test_a_spoken_description_is_transcribed(transcriber, tmp_path):
    wav = speech.synthesize(EXAMPLE, tmp_path / "example.wav")
    text = transcriber.transcribe(wav)
    assert text == speech.normalize_words(text)  # lower-case words, no punctuation
    words = text.split()
    for key in ("east", "building", "north", "black", "traffic"):
        assert key in words, text
    assert speech.word_error_rate(EXAMPLE, text) <= 0.3, text

    # samples at another rate are resampled: the same words
    samples, rate = speech.read_wav(wav)
    at22k = speech.resample(samples, rate, 22050)
    assert transcriber.transcribe(at22k, 22050).split()[:4] == words[:4]


@needs_espeak
def test_the_description_model_hears_descriptions_better_than_the_general_one(transcriber,
                                                                              tmp_path):
    said = ("I'm on top of a gray sidewalk and west of a dark green vegetation. "
            "I'm south of a black pole and east of a beige building.")
    wav = speech.synthesize(said, tmp_path / "d.wav")
    ours = speech.word_error_rate(said, transcriber.transcribe(wav))
    general = speech.word_error_rate(said, speech.Transcriber("general").transcribe(wav))
    assert ours <= 0.1 and ours < general


@needs_espeak
def test_transcribe_and_speak_commands(tmp_path, capsys):
    wav = tmp_path / "q.wav"
    assert cli.main(["speak", "I'm north of a gray building.", "--out", str(wav)]) == 0
    assert capsys.readouterr().out.strip() == str(wav)
    assert cli.main(["transcribe", str(wav), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "north" in out["text"] and "building" in out["text"]
    assert out["audio_s"] > 0.5 and out["transcribe_s"] > 0
    assert cli.main(["transcribe", str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err


# --- end to end over DDS -----------------------------------------------------------------------


@needs_espeak
@pytest.mark.timeout(600)
def test_a_spoken_description_gets_a_pose_over_dds(ros_env, tiny_dataset, tiny_weights,
                                                   transcriber, tmp_path):
    """The transcript published on ``query`` gets a result and a pose; then the speech node
    does the transcribing: a WAV file at its start, another named on ``audio_file``."""
    from lifecycle_msgs.msg import State
    from std_msgs.msg import String
    from test_ros_node import NS, QUERIES, VAL_SCENE, Probe, start_localizer, stop

    from spatialoc_ros.data.kitti360pose import load_scene
    from spatialoc_ros.msg import LocalizationResult

    poses = load_scene(tiny_dataset, VAL_SCENE).poses[:3]
    said = [speech.spoken_description(p.text) for p in poses]
    wavs = [speech.synthesize(s, tmp_path / f"said{i}.wav") for i, s in enumerate(said)]
    heard = [transcriber.transcribe(w) for w in wavs]
    for s, h in zip(said, heard):
        assert speech.word_error_rate(s, h) <= 0.3, (s, h)

    log = tmp_path / "node.log"
    proc = start_localizer(
        ros_env, log, f"map_path:={tiny_dataset}", f"scenes:=[{VAL_SCENE}]",
        f"weights_dir:={tiny_weights}", f"cache_dir:={tiny_weights / 'cache'}", "device:=cpu",
        "top_k:=3", "low_confidence_sigma_m:=1000000.0")
    probe = Probe(ros_env)
    speaker = None
    try:
        probe.wait_state(State.PRIMARY_STATE_ACTIVE, proc)
        probe.wait_subscribed()

        def check_answer(text):
            result = probe.result_for(text, timeout=120)
            assert result.status in (LocalizationResult.STATUS_OK,
                                     LocalizationResult.STATUS_LOW_CONFIDENCE), result.reason
            assert len(result.hypotheses) == 3
            p = probe.pose_for(result).pose.pose.position
            assert np.isfinite([p.x, p.y, p.z]).all()
            assert (p.x, p.y) == (result.hypotheses[0].pose.pose.position.x,
                                  result.hypotheses[0].pose.pose.position.y)

        probe.send(heard[0])  # the transcript as the recogniser printed it
        check_answer(heard[0])

        # the speech node: its start file, then a file named on audio_file
        audio_files = probe.node.create_publisher(String, f"{NS}/audio_file", QUERIES)
        speaker = _start_speech_node(ros_env, tmp_path / "speech.log", NS,
                                     f"wav_file:={wavs[1]}")
        check_answer(heard[1])
        deadline = time.monotonic() + 60
        while audio_files.get_subscription_count() == 0:
            assert time.monotonic() < deadline and speaker.poll() is None, "no audio_file reader"
            time.sleep(0.05)
        audio_files.publish(String(data=str(wavs[2])))
        check_answer(heard[2])
        audio_files.publish(String(data=str(tmp_path / "missing.wav")))  # logged, no query
        time.sleep(1.0)
        assert speaker.poll() is None and proc.poll() is None
    finally:
        probe.close()
        if speaker is not None:
            # SIGTERM, then SIGKILL after 15 s: the answers above are what is under test here
            speaker.terminate()
            try:
                speaker.wait(15)
            except subprocess.TimeoutExpired:
                speaker.kill()
                speaker.wait()
            print((tmp_path / "speech.log").read_text(errors="replace")[-2000:])
        stop(proc)
        print(log.read_text(errors="replace")[-3000:])
    assert "cannot transcribe" in (tmp_path / "speech.log").read_text()


def _start_speech_node(env, log_path, namespace, *params):
    cmd = [sys.executable, "-m", "spatialoc_ros.ros.speech_node", "--ros-args",
           "-r", f"__ns:={namespace}"]
    for p in params:
        cmd += ["-p", p]
    env = dict(env, RCUTILS_LOGGING_BUFFERED_STREAM="0",
               ROS_LOG_DIR=str(log_path.parent / "ros_log"))
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
