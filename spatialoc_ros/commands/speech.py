"""``spatialoc transcribe`` and ``spatialoc speak``: offline speech, the work in
spatialoc_ros.speech."""
from __future__ import annotations

import json
import time


def add_speech_commands(commands) -> None:
    p = commands.add_parser("transcribe", help="speech (a WAV file) to text, offline",
                            description="Transcribe a 16-bit PCM WAV file with pocketsphinx's "
                                        "bundled en-us model and a language model of "
                                        "descriptions; prints the words heard.")
    p.add_argument("wav", metavar="FILE.wav", help="16-bit PCM WAV, any sample rate")
    p.add_argument("--language-model", choices=("descriptions", "general"),
                   default="descriptions",
                   help="descriptions: built from the map vocabulary and everyday words "
                        "(default); general: pocketsphinx's general English model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_transcribe)

    p = commands.add_parser("speak", help="text to speech (a WAV file) with espeak-ng",
                            description="Speak a text with espeak-ng into a 16 kHz mono WAV "
                                        "file, e.g. to try `spatialoc transcribe`.")
    p.add_argument("text", help='e.g. "I\'m north of a gray building."')
    p.add_argument("--out", required=True, metavar="FILE.wav")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice (default: en-us)")
    p.add_argument("--speed", type=int, default=150, metavar="WPM",
                   help="words per minute (default: 150)")
    p.set_defaults(handler=_run_speak)


def _run_transcribe(args) -> int:
    from ..speech import SAMPLE_RATE, Transcriber, read_wav, resample

    samples, rate = read_wav(args.wav)
    transcriber = Transcriber(args.language_model)
    started = time.monotonic()
    text = transcriber.transcribe(resample(samples, rate, SAMPLE_RATE), SAMPLE_RATE)
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({"file": args.wav, "text": text, "audio_s": len(samples) / rate,
                          "transcribe_s": seconds, "load_s": transcriber.load_s,
                          "language_model": args.language_model}))
    else:
        print(text)
    return 0


def _run_speak(args) -> int:
    from ..errors import SpatialocError
    from ..speech import synthesize

    if args.speed < 80 or args.speed > 450:
        raise SpatialocError(f"--speed is 80 to 450 words per minute, got {args.speed}")
    print(synthesize(args.text, args.out, voice=args.voice, speed_wpm=args.speed))
    return 0
