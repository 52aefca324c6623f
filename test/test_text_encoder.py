"""Text side: sentence splitting, the frozen encoder (MiniLM and a tiny T5) and the token cache."""
import io
import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from spatialoc_ros.errors import SpatialocError  # noqa: E402
from spatialoc_ros.networks.text_encoder import FrozenTextEncoder, split_sentences  # noqa: E402
from spatialoc_ros.core.text_cache import INDEX_FILE, TextCache  # noqa: E402

HINTS = [
    "The pose is north of a gray pole.",
    "The pose is south of a green vegetation.",
    "The pose is east of a dark-green building.",
    "The pose is west of a white car.",
    "The pose is on-top of a gray road.",
    "The pose is north of a black traffic sign.",
]


# --- sentence splitting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The pose is north of a pole.", ["The pose is north of a pole."]),
        ("North of a pole. East of a car", ["North of a pole.", "East of a car"]),
        ("One!  Two?\nThree.\n\n", ["One!", "Two?", "Three."]),
        ("  spaced   out\ttext .  next", ["spaced out text .", "next"]),
        ("It is 3.5 m away. Yes.", ["It is 3.5 m away.", "Yes."]),
        ("Wait... what?! Fine.", ["Wait...", "what?!", "Fine."]),
        ('He said "go." Then (stop.) end', ['He said "go."', "Then (stop.)", "end"]),
        ("", []),
        ("   \n ", []),
        (". . !", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_split_many_sentences():
    text = " ".join(HINTS * 2)
    assert split_sentences(text) == HINTS * 2
    assert len(split_sentences(" ".join(HINTS[:1]))) == 1


# --- MiniLM ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return FrozenTextEncoder("minilm", batch_size=4)


def test_minilm_loads_offline_and_separates_meaning(minilm):
    assert minilm.hidden_size == 384
    assert minilm.name.startswith("minilm@") and len(minilm.name) == len("minilm@") + 12
    v = minilm.encode_pooled(
        [
            "The pose is north of a gray pole.",
            "The position lies to the north of a grey post.",
            "I would like a pizza with extra cheese.",
        ]
    )
    assert v.shape == (3, 384)
    assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
    paraphrase, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert paraphrase > unrelated + 0.3


def test_encoder_is_frozen(minilm):
    assert all(not p.requires_grad for p in minilm.parameters())
    wrapper = torch.nn.Sequential(minilm)
    wrapper.train()
    assert not minilm.training and not minilm.model.training
    assert all(not m.training for m in minilm.modules())
    tokens, mask = minilm.encode_tokens(HINTS[:2])
    assert not tokens.requires_grad and not tokens.is_inference()
    # outputs can feed trainable layers
    layer = torch.nn.Linear(384, 4)
    layer(tokens).sum().backward()
    assert layer.weight.grad is not None


def test_padding_does_not_change_embeddings(minilm):
    short = "The pose is west of a white car."
    long = " ".join(["The pose is east of a very tall dark-green building near the road"] * 4)
    alone, mask_alone = minilm.encode_tokens([short])
    batched, mask_batched = minilm.encode_tokens([long, short])
    n = int(mask_alone[0].sum())
    assert batched.shape[1] > 3 * n
    assert int(mask_batched[1].sum()) == n and bool(mask_batched[1, :n].all())
    assert torch.allclose(batched[1, :n], alone[0, :n], atol=1e-5)
    assert torch.count_nonzero(batched[1, n:]) == 0


def test_encode_tokens_shapes_and_order(minilm):
    sentences = HINTS + ["Short.", HINTS[0]]  # more than one internal batch, a duplicate
    tokens, mask = minilm.encode_tokens(sentences)
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert tokens.shape == (8, mask.shape[1], 384) and mask.shape[1] == int(mask.sum(1).max())
    assert torch.equal(tokens[0], tokens[7])
    assert mask[6].sum() < mask[0].sum()
    empty, empty_mask = minilm.encode_tokens([])
    assert empty.shape == (0, 0, 384) and empty_mask.shape == (0, 0)
    with pytest.raises(TypeError):
        minilm.encode_tokens("one string")


def test_unknown_specs_fail_with_one_line(tmp_path):
    with pytest.raises(SpatialocError, match="not-a-real/model-xyz") as e:
        FrozenTextEncoder("not-a-real/model-xyz")
    assert "\n" not in str(e.value)
    with pytest.raises(SpatialocError, match="no such folder"):
        FrozenTextEncoder(str(tmp_path / "missing"))
    with pytest.raises(SpatialocError, match="config.json"):
        FrozenTextEncoder(str(tmp_path))


# --- tiny T5 -----------------------------------------------------------------------------------


def _tiny_t5(folder, seed=0):
    """A randomly initialised 2-layer T5 encoder (d_model 32) and a sentencepiece tokenizer."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(HINTS * 4),
        model_writer=proto,
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_tiny_t5_folder(tmp_path):
    from transformers import T5EncoderModel

    encoder = FrozenTextEncoder(str(_tiny_t5(tmp_path / "tiny-t5")))
    assert isinstance(encoder.model, T5EncoderModel)
    assert encoder.hidden_size == 32
    assert encoder.name.startswith("tiny-t5@")
    tokens, mask = encoder.encode_tokens(HINTS[:3] + ["North."])
    assert tokens.shape == (4, mask.shape[1], 32)
    assert mask[3].sum() < mask[0].sum()
    # a different model in the same place gets a different name
    other = FrozenTextEncoder(str(_tiny_t5(tmp_path / "tiny-t5", seed=1)))
    assert other.name != encoder.name


# --- the cache ---------------------------------------------------------------------------------


class Counting:
    """Wraps an encoder and counts the sentences it is asked to encode."""

    def __init__(self, encoder):
        self.encoder, self.calls, self.sentences = encoder, 0, 0
        self.name, self.hidden_size = encoder.name, encoder.hidden_size

    def encode_tokens(self, sentences):
        self.calls += 1
        self.sentences += len(sentences)
        return self.encoder.encode_tokens(sentences)


def test_cache_encodes_each_sentence_once(minilm):
    counting = Counting(minilm)
    cache = TextCache(counting, batch_size=4)
    tokens, mask = cache.get(HINTS + HINTS[:2])
    assert counting.sentences == 6 and counting.calls == 2
    direct, direct_mask = minilm.encode_tokens(HINTS + HINTS[:2])
    assert torch.equal(mask, direct_mask)
    assert torch.allclose(tokens, direct, atol=1e-5)
    calls = counting.calls
    again, again_mask = cache.get(list(reversed(HINTS)))
    assert counting.calls == calls and len(cache) == 6
    assert torch.equal(again[0, : again_mask[0].sum()], tokens[5, : mask[5].sum()])


def test_cache_over_a_base_never_encodes_what_the_base_holds(minilm):
    base = TextCache(minilm)
    base.add(HINTS[:4])
    counting = Counting(minilm)
    cache = TextCache(counting, base=base)
    assert HINTS[0] in cache and len(cache) == 0
    tokens, mask = cache.get(HINTS)                       # two new sentences, four from the base
    assert counting.sentences == 2 and len(cache) == 2 and len(base) == 4
    first = base.entry(HINTS[0])
    assert torch.equal(tokens[0, : mask[0].sum()], first)
    index, hint_mask = cache.batch_hints([HINTS[:2], HINTS[4:]])  # rows of its own, no encoding
    assert counting.sentences == 2 and hint_mask.sum().item() == 4
    table, _ = cache.table()
    assert torch.equal(table[index[0, 0], : first.shape[0]], first)
    fresh = cache.fresh()
    assert len(fresh) == 0 and fresh.base is base and HINTS[3] in fresh
    other = Counting(minilm)
    other.name = "something-else@000000000000"
    with pytest.raises(ValueError, match="base cache"):
        TextCache(other, base=base)


def test_cache_disk_round_trip_and_other_encoder(minilm, tmp_path):
    cache = TextCache(minilm)
    cache.add(HINTS)
    cache.save(tmp_path)
    counting = Counting(minilm)
    loaded = TextCache(counting, tmp_path)
    assert loaded.sentences == HINTS
    a, am = cache.table()
    b, bm = loaded.table()
    assert torch.equal(a, b) and torch.equal(am, bm)
    loaded.get(HINTS)
    assert counting.calls == 0

    class Other(Counting):
        pass

    other = Other(minilm)
    other.name = "something-else@000000000000"
    refused = TextCache(other, tmp_path)
    assert len(refused) == 0
    refused.get(HINTS[:2])
    assert other.sentences == 2
    refused.save()
    assert json.loads((tmp_path / INDEX_FILE).read_text())["encoder"] == other.name
    assert len(TextCache(minilm, tmp_path)) == 0  # now the first encoder's cache is gone


def test_cache_damaged_files_are_rebuilt(minilm, tmp_path):
    cache = TextCache(minilm)
    cache.add(HINTS[:3])
    cache.save(tmp_path)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    index["lengths"][0] += 1
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    assert len(TextCache(minilm, tmp_path)) == 0
    (tmp_path / INDEX_FILE).write_text("{not json")
    assert len(TextCache(minilm, tmp_path)) == 0


def test_batch_hints_any_number_of_hints(minilm):
    cache = TextCache(minilm)
    descriptions = [HINTS, HINTS[:1], HINTS * 2, " ".join(HINTS[2:5]), []]
    index, mask = cache.batch_hints(descriptions)
    assert index.shape == mask.shape == (5, 12)
    assert mask.sum(1).tolist() == [6, 1, 12, 3, 0]
    assert len(cache) == 6
    tokens, token_mask = cache.table()
    assert tokens.shape[0] == 6
    per_query = tokens[index]  # [B, N, L, Dt]
    assert per_query.shape == (5, 12, tokens.shape[1], 384)
    assert index[3, :3].tolist() == cache.rows(HINTS[2:5]).tolist()
    assert torch.equal(index[2, 6:], index[2, :6])
    assert int(index[~mask].abs().sum()) == 0
    # a row's tokens in the table are the sentence's tokens
    row = int(index[1, 0])
    n = int(token_mask[row].sum())
    alone, _ = cache.get(HINTS[:1])
    assert torch.equal(tokens[row, :n], alone[0, :n])
