"""Token embeddings of hint sentences, computed once per unique sentence.

The text encoder is frozen (as SpatiaLoc's T5 is, arXiv 2601.03579 §3.2), so a
sentence always gives the same token embeddings.
KITTI360Pose hints are templated ("The pose is {direction} of a {colour} {class}."),
so a whole dataset has only a few hundred unique sentences: encoding them once
replaces the encoder's forward pass in every training step.

Shapes: S sentences, U cached sentences, L tokens, Dt encoder width, B queries,
N hints per query (any number; padded with a mask).

Entries are kept in float32, the encoder's own output type: the cache then gives
exactly what the encoder gives (training on cached features and inference on fresh
ones see the same numbers), CPU kernels need no conversions, and the size is small
anyway (≈ 1,000 sentences × 16 tokens × 1024 × 4 B ≈ 65 MB even for t5-large).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..atomic import write_json
from ..networks.text_encoder import split_sentences
from .cache_files import CacheDamaged, read_tensors, save_tensors

log = logging.getLogger(__name__)

TOKENS_FILE = "text_cache.safetensors"
INDEX_FILE = "text_cache.json"
FORMAT = 2  # 2: the tokens file carries a checksum of its contents

Description = Union[str, Sequence[str]]  # one query: its hint sentences, or one text to split


class TextCache:
    """Per-sentence token embeddings for one encoder (anything with ``name``,
    ``hidden_size`` and ``encode_tokens(sentences) -> (tokens [S, L, Dt], mask [S, L])``).

    Each unique sentence gets a row number in order of first appearance; rows never
    change, so indices from :meth:`batch_hints` stay valid while the cache grows.
    With ``folder``, a cache saved there is loaded if the same encoder built it.

    With ``base`` (another cache of the same encoder, e.g. every sentence the language front
    end can produce, :func:`~.language.canonical_sentences`), sentences the base holds are
    read from it and never encoded or stored here: :meth:`get` and :func:`text_batch` see
    both. Row numbers (:meth:`rows`, :meth:`table`, :meth:`batch_hints`) are this cache's own.
    """

    def __init__(self, encoder, folder: Union[str, Path, None] = None, batch_size: int = 256,
                 base: Optional["TextCache"] = None):
        if base is not None and base.name != encoder.name:
            raise ValueError(f"base cache of encoder {base.name!r}, not {encoder.name!r}")
        self.encoder = encoder
        self.base = base
        self.batch_size = batch_size
        self.folder = Path(folder) if folder is not None else None
        self._rows: Dict[str, int] = {}
        self._tokens: List[torch.Tensor] = []  # row -> [L_i, Dt] float32
        self._table: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        if self.folder is not None:
            self.load(self.folder)

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.hidden_size)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sentence: str) -> bool:
        return sentence in self._rows or (self.base is not None and sentence in self.base)

    def fresh(self) -> "TextCache":
        """An empty cache of the same encoder over the same base (what a new listener knows)."""
        return TextCache(self.encoder, batch_size=self.batch_size, base=self.base)

    def entry(self, sentence: str) -> torch.Tensor:
        """The token embeddings [L, Dt] of a cached sentence (the base's, if it holds it)."""
        row = self._rows.get(sentence)
        if row is not None:
            return self._tokens[row]
        if self.base is not None and sentence in self.base:
            return self.base.entry(sentence)
        raise KeyError(sentence)

    @property
    def sentences(self) -> List[str]:
        """The cached sentences in row order."""
        return list(self._rows)

    # --- filling ------------------------------------------------------------------------

    def add(self, sentences: Sequence[str]) -> int:
        """Encode the sentences not cached yet (in batches); returns how many were new."""
        if isinstance(sentences, str):
            raise TypeError("expected a list of sentences, got one string")
        missing = list(dict.fromkeys(s for s in sentences if s not in self))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            tokens, mask = self.encoder.encode_tokens(chunk)
            for s, t, m in zip(chunk, tokens, mask):
                self._rows[s] = len(self._tokens)
                self._tokens.append(t[m].float().cpu().contiguous())
        if missing:
            self._table = None
        return len(missing)

    # --- reading ------------------------------------------------------------------------

    def rows(self, sentences: Sequence[str]) -> torch.Tensor:
        """Row numbers of the sentences (encoding any that are new; a base's sentences get rows
        here that share the base's tensors). [S] int64"""
        self.add(sentences)
        for s in dict.fromkeys(s for s in sentences if s not in self._rows):
            self._rows[s] = len(self._tokens)
            self._tokens.append(self.base.entry(s))
            self._table = None
        return torch.tensor([self._rows[s] for s in sentences], dtype=torch.long)

    def get(self, sentences: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings as the encoder gives them, from the cache.

        Returns ``tokens`` [S, L, Dt] float32 (zero on padding) and ``mask`` [S, L] bool,
        L = the longest of these sentences.
        """
        self.add(sentences)
        return _pad([self.entry(s) for s in sentences], self.hidden_size)

    def table(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every cached sentence, padded: ``tokens`` [U, L, Dt], ``mask`` [U, L].

        Index it with :meth:`batch_hints`'s rows: ``tokens[index]`` is [B, N, L, Dt].
        Rebuilt only after the cache grows.
        """
        if self._table is None:
            self._table = _pad(self._tokens, self.hidden_size)
        return self._table

    def batch_hints(
        self, descriptions: Sequence[Description]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rows of each query's hints, padded to the query with the most hints.

        ``descriptions`` holds one entry per query: its list of hint sentences, or a
        text that :func:`split_sentences` splits. Returns ``index`` [B, N] int64 (rows
        of :meth:`table`; 0 on padding) and ``mask`` [B, N] bool (True on real hints).
        New sentences are encoded first.
        """
        hints = [split_sentences(d) if isinstance(d, str) else list(d) for d in descriptions]
        self.rows([s for h in hints for s in h])
        return batch_hints(hints, self._rows)

    # --- disk ---------------------------------------------------------------------------

    def save(self, folder: Union[str, Path, None] = None) -> Path:
        """Write ``text_cache.safetensors`` (all tokens, concatenated, with a checksum) and
        ``text_cache.json``, each atomically. Returns the folder.
        """
        folder = Path(folder) if folder is not None else self.folder
        if folder is None:
            raise ValueError("no folder to save the text cache in")
        sentences = self.sentences
        lengths = [int(t.shape[0]) for t in self._tokens]
        packed = torch.cat(self._tokens) if self._tokens else torch.zeros(0, self.hidden_size)
        stamp = _stamp(self.name, sentences, lengths)
        save_tensors(folder / TOKENS_FILE, {"tokens": packed},
                     {"encoder": self.name, "stamp": stamp})
        index = {"format": FORMAT, "encoder": self.name, "hidden_size": self.hidden_size,
                 "dtype": "float32", "stamp": stamp, "sentences": sentences, "lengths": lengths}
        write_json(folder / INDEX_FILE, index, indent=None, ensure_ascii=False)
        return folder

    def load(self, folder: Union[str, Path]) -> bool:
        """Replace the contents with the cache saved in ``folder``.

        Returns False, leaving the cache empty (to be rebuilt), when there is none, when
        another encoder built it, or when the files are damaged or do not match.
        """
        self._rows, self._tokens, self._table = {}, [], None
        folder = Path(folder)
        if not (folder / INDEX_FILE).is_file():
            return False
        try:
            sentences, tokens = self._read(folder)
        except _Refused as why:
            log.warning("text cache in %s not used: %s; it will be rebuilt", folder, why)
            return False
        self._rows = {s: i for i, s in enumerate(sentences)}
        self._tokens = tokens
        return True

    def _read(self, folder: Path) -> Tuple[List[str], List[torch.Tensor]]:
        try:
            index = json.loads((folder / INDEX_FILE).read_text())
            encoder, sentences, lengths = index["encoder"], index["sentences"], index["lengths"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _Refused(f"unreadable index ({e})") from None
        if index.get("format") != FORMAT:
            raise _Refused(f"format {index.get('format')!r}, expected {FORMAT}")
        if encoder != self.name:
            raise _Refused(f"built with encoder {encoder!r}, not {self.name!r}")
        if len(sentences) != len(lengths) or len(set(sentences)) != len(sentences):
            raise _Refused("inconsistent index")
        try:
            tensors, meta = read_tensors(folder / TOKENS_FILE)
        except (CacheDamaged, OSError) as e:
            raise _Refused(f"unreadable tokens file ({e})") from None
        if "tokens" not in tensors:
            raise _Refused("no tokens in the tokens file")
        packed, stamp = tensors["tokens"], meta.get("stamp")
        if stamp != index.get("stamp") or stamp != _stamp(encoder, sentences, lengths):
            raise _Refused("tokens file and index do not belong together")
        if packed.dim() != 2 or packed.shape != (sum(lengths), self.hidden_size):
            raise _Refused(f"tokens of shape {tuple(packed.shape)} do not match the index")
        return sentences, list(torch.split(packed.float(), lengths))


class _Refused(Exception):
    """A saved cache that must not be used."""


def batch_hints(
    hints: Sequence[Sequence[str]], rows: Mapping[str, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map each query's hint sentences to row numbers, padded with a mask.

    ``hints`` [B][N_b] sentences; ``rows`` sentence -> row. Returns ``index`` [B, N]
    int64 with N = max(1, max N_b) (0 on padding) and ``mask`` [B, N] bool.
    """
    width = max([len(h) for h in hints] + [1])
    index = torch.zeros(len(hints), width, dtype=torch.long)
    mask = torch.zeros(len(hints), width, dtype=torch.bool)
    for b, h in enumerate(hints):
        index[b, : len(h)] = torch.tensor([rows[s] for s in h], dtype=torch.long)
        mask[b, : len(h)] = True
    return index, mask


def text_batch(cache: "TextCache", hints: Sequence[Sequence[str]]) -> Dict[str, torch.Tensor]:
    """Keyword inputs of ``CoarseModel.encode_text`` (and the fine stage) for queries given as
    hint lists.

    Each unique sentence of the batch is encoded once: ``tokens`` [S, L, Dt] and
    ``token_mask`` [S, L] from the cache; ``hint_index`` / ``hint_mask`` [B, Q]
    point each query's hints at those rows (queries may have any number of hints).
    """
    unique, hint_index, hint_mask = unique_hints(hints)
    tokens, token_mask = cache.get(unique)
    return dict(tokens=tokens, token_mask=token_mask, hint_index=hint_index, hint_mask=hint_mask)


def unique_hints(hints: Sequence[Sequence[str]]) -> Tuple[List[str], torch.Tensor, torch.Tensor]:
    """The batch's unique sentences (in order of first appearance) and each query's hints as
    rows of them: ``index`` [B, Q] and ``mask`` [B, Q] (:func:`batch_hints`)."""
    unique = list(dict.fromkeys(s for h in hints for s in h))
    index, mask = batch_hints(hints, {s: i for i, s in enumerate(unique)})
    return unique, index, mask


def _pad(tokens: Sequence[torch.Tensor], dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack [L_i, Dt] tensors into ``tokens`` [S, L, Dt] (zero padded) and ``mask`` [S, L]."""
    width = max([t.shape[0] for t in tokens] + [0])
    out = torch.zeros(len(tokens), width, dim)
    mask = torch.zeros(len(tokens), width, dtype=torch.bool)
    for i, t in enumerate(tokens):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def _stamp(encoder: str, sentences: Sequence[str], lengths: Sequence[int]) -> str:
    """Ties the tokens file to its index: a hash of the encoder, sentences and lengths."""
    blob = json.dumps([encoder, list(sentences), list(lengths)], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
