"""The Localizer and `spatialoc localize` / `eval` / `bench`.

On a tiny map with briefly trained weights.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialoc_ros.cli import main
from spatialoc_ros.errors import SpatialocError
from spatialoc_ros.core.weights import CALIBRATION_FILE, load_calibration
from spatialoc_ros.inference import Localizer
from spatialoc_ros.core.query_text import QueryRejected

VAL_SCENE = "2013_05_28_drive_0010_sync"
GOOD = "The pose is north of a gray building. The pose is on-top of a dark-green sidewalk."


@pytest.fixture(scope="module")
def localizer(tiny_dataset, tiny_weights):
    return Localizer(tiny_dataset, tiny_weights, scenes=[VAL_SCENE], device="cpu",
                     cache=tiny_weights / "cache", top_k=5)


def test_hypotheses_best_first_with_valid_covariances(localizer):
    result = localizer.localize(GOOD)
    assert len(result.hypotheses) == 5 and [h.rank for h in result.hypotheses] == list(range(5))
    scores = [h.score for h in result.hypotheses]
    assert scores == sorted(scores, reverse=True)
    cells = localizer.map.cells_by_id
    for h in result.hypotheses:
        assert h.precision > 0 and np.isfinite(h.position).all()
        cell = cells[h.cell_id]
        assert np.all(h.position[:2] > cell.bbox_w[:2] - 2 * cell.cell_size)  # near its cell
        assert (np.array_equal(h.covariance_xy, h.covariance_xy.T)
                and np.linalg.eigvalsh(h.covariance_xy).min() > 0)
    cov = result.covariance_xy
    assert (np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0
            and np.isfinite(cov).all())
    assert (result.recognised_hints == 2
            and set(result.timing_ms) == {"language", "text", "coarse", "fine", "total"})
    doc = json.loads(json.dumps(result.to_json()))
    assert {"hypotheses", "timing_ms", "position", "covariance_xy"} <= set(doc)
    assert ({"cell_id", "score", "position", "covariance_xy", "precision"}
            <= set(doc["hypotheses"][0]))


def test_batch_and_single_query_agree(localizer):
    one = localizer.localize(GOOD)
    cand = localizer.candidates([one.hints, ["The pose is west of a black pole."]], 5)
    assert ([localizer.coarse.gallery.ids[r] for r in cand.rows[0].tolist()]
            == [h.cell_id for h in one.hypotheses])
    torch.testing.assert_close(cand.positions[0, :, :2].numpy(),
                               np.stack([h.position[:2] for h in one.hypotheses]),
                               check_dtype=False)


def test_served_path_matches_the_models_run_on_token_embeddings(localizer):
    """The node's path reads the canonical hint sentences' per-sentence features, computed when
    it starts, and runs the fine stage's hints once per query; training and `eval` run both
    models on token embeddings. Both must give the same cells and positions (float32 noise
    only: the sentence features are computed in another batch, so with other padding)."""
    from spatialoc_ros.core.text_cache import text_batch
    from spatialoc_ros.networks.outputs import CoarseOutputs

    hints = [["The pose is north of a gray building.", "The pose is on-top of a dark-green "
              "sidewalk."], ["The pose is west of a black pole.", "Somewhere near a fountain."]]
    served = localizer.candidates(hints, 5)
    with torch.inference_mode():
        batch = text_batch(localizer.text, hints)
        query = localizer.coarse.model.encode_text(**batch)
        query = CoarseOutputs(**{n: v for n, v in vars(query).items()})
        scores, rows = localizer.retriever.top_k(query, 5)
        text_k = dict(batch, hint_index=batch["hint_index"].repeat_interleave(5, 0),
                      hint_mask=batch["hint_mask"].repeat_interleave(5, 0))
        out = localizer.fine(text_k, localizer.rows.bank_batch(rows.reshape(-1)))
    assert torch.equal(served.rows, rows)
    torch.testing.assert_close(served.scores, scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(served.precision, out.precision.reshape(2, 5), atol=1e-4,
                               rtol=1e-3)
    size = localizer._cell_size[rows].unsqueeze(-1)
    positions = localizer._origin[rows] + (0.5 + out.offset.double().reshape(2, 5, 2)) * size
    torch.testing.assert_close(served.positions, positions, atol=1e-3, rtol=0)  # metres


def test_understood_descriptions_never_run_the_text_encoder(localizer):
    """Every hint the language front end can produce is in the table encoded at start; only a
    text it does not understand reaches the encoder."""
    localizer.forget_queries()
    localizer.localize("um i'm north of a grey building, standing on the green pavement")
    assert len(localizer.text) == 0
    localizer.localize("Somewhere quiet. Nothing to see.")
    assert localizer.text.sentences == ["Somewhere quiet.", "Nothing to see."]
    localizer.forget_queries()
    assert len(localizer.text) == 0 and len(localizer.text.base) >= 840


def test_a_fitted_consensus_reorders_the_same_cells_and_publishes_their_mode(localizer):
    from spatialoc_ros.core.consensus import consensus_order
    from spatialoc_ros.core.covariance import Calibration

    plain = localizer.localize(GOOD)
    saved = localizer.calibration
    localizer.calibration = Calibration(0.01, 4.0, "test", consensus_beta=0.0,
                                        consensus_bandwidth_m=15.0)
    try:
        fused = localizer.localize(GOOD)
    finally:
        localizer.calibration = saved
    assert (sorted(h.cell_id for h in fused.hypotheses)
            == sorted(h.cell_id for h in plain.hypotheses))
    assert [h.rank for h in fused.hypotheses] == list(range(5))
    cand = localizer.candidates([plain.hints], 5)
    order, want, agreeing = consensus_order(cand.positions, cand.scores.double(), 0.0, 15.0,
                                            localizer.scene_index[cand.rows])
    assert ([h.cell_id for h in fused.hypotheses]
            == [localizer.coarse.gallery.ids[r] for r in cand.rows[0, order[0]]])
    np.testing.assert_allclose(np.stack([h.position[:2] for h in fused.hypotheses]),
                               want[0].numpy())
    assert [h.agreeing for h in fused.hypotheses] == agreeing[0].tolist()
    assert fused.to_json()["hypotheses"][0]["agreeing_cells"] == fused.best.agreeing
    assert all(h.agreeing == 1 for h in plain.hypotheses)  # no consensus: every cell stands alone
    cov = fused.covariance_xy
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0


@pytest.mark.parametrize("consensus", [{}, {"consensus_beta": 0.5, "consensus_bandwidth_m": 10.0}],
                         ids=["retrieval-order", "consensus"])
def test_bad_text_is_refused_and_unknown_words_widen_the_ellipse(localizer, tiny_weights,
                                                                 consensus):
    for text in ("", "   ", "x" * 10_000, "\x00\x01"):
        with pytest.raises(QueryRejected):
            localizer.localize(text)
    (tiny_weights / CALIBRATION_FILE).write_text(
        json.dumps({"scale": 0.01, "beta": 64.0, **consensus}))
    try:
        localizer.calibration = load_calibration(tiny_weights)
        assert (localizer.calibration.consensus_bandwidth_m
                == consensus.get("consensus_bandwidth_m", 0.0))
        good = localizer.localize(GOOD)
        vague = localizer.localize("Lorem ipsum dolor sit amet. Consectetur adipiscing elit.")
        # the same two hints, said among clauses the front end cannot use
        half = localizer.localize(GOOD + " A pole is behind me. The weather is nice.")
    finally:
        (tiny_weights / CALIBRATION_FILE).unlink()
        localizer.calibration = __import__("spatialoc_ros.core.covariance",
                                           fromlist=["x"]).Calibration()
    assert vague.recognised_hints == 0 and len(vague.hypotheses) == 5
    assert vague.sigma_m > 2 * good.sigma_m
    assert half.hints == good.hints and half.understood == 0.5 and good.understood == 1.0
    assert good.sigma_m < half.sigma_m


def test_localize_cli_json_and_one_line_errors(tiny_dataset, tiny_weights, capsys):
    args = ["localize", "--map", str(tiny_dataset), "--weights", str(tiny_weights),
            "--scenes", "0010", "--cache", str(tiny_weights / "cache"), "--top-k", "3"]
    assert main(args + ["--text", GOOD, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["hypotheses"]) == 3 and len(doc["hypotheses"][0]["position"]) == 3
    assert main(args + ["--text", GOOD]) == 0
    assert "position:" in capsys.readouterr().out
    for text in ("", " \n "):
        assert main(args + ["--text", text]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "spatialoc: error:" in err
    assert main(["localize", "--map", str(tiny_dataset / "nope"), "--text", GOOD,
                 "--weights", str(tiny_weights)]) == 2
    assert "no such map folder" in capsys.readouterr().err


def test_missing_fine_weights_are_named(tiny_dataset, tiny_weights, tmp_path):
    for name in ("pointnet.safetensors", "pointnet.json", "coarse.safetensors", "coarse.json"):
        (tmp_path / name).write_bytes((tiny_weights / name).read_bytes())
    with pytest.raises(SpatialocError, match="fine.safetensors"):
        Localizer(tiny_dataset, tmp_path, scenes=[VAL_SCENE], device="cpu",
                  cache=tiny_weights / "cache")


def test_eval_reports_localization_recall_and_fits_calibration(tiny_dataset, tiny_weights, capsys):
    args = ["eval", "--data", str(tiny_dataset), "--split", "val", "--weights", str(tiny_weights),
            "--cache", str(tiny_weights / "cache")]
    assert main(args + ["--json", "--fit-calibration"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["localization_recall"]) == {"1", "5", "10"}
    assert set(report["localization_recall"]["1"]) == {"5", "10", "15"}
    rec = report["localization_recall"]
    assert (rec["1"]["5"] <= rec["5"]["5"] <= rec["10"]["5"]
            and rec["1"]["5"] <= rec["1"]["10"] <= rec["1"]["15"])
    cal = report["calibration"]
    assert ({"within_1sigma", "within_2sigma", "nll"} <= set(cal)
            and cal["fitted_on"].startswith("val"))
    assert abs(cal["within_2sigma"] - 0.865) < 0.2
    saved = json.loads((tiny_weights / CALIBRATION_FILE).read_text())
    assert (saved["scale"] == cal["scale"]
            and saved["consensus_bandwidth_m"] == cal["consensus_bandwidth_m"])
    # the answer `localize` gives; the protocol's figures are above
    pub = report["published_recall"]
    assert set(pub) == {"1", "5", "10"} and pub["1"]["5"] <= pub["10"]["5"]
    if cal["consensus_bandwidth_m"] == 0:
        assert pub == rec
    (tiny_weights / CALIBRATION_FILE).unlink()
    assert main(["eval", "--data", str(tiny_dataset), "--split", "test",
                 "--weights", str(tiny_weights), "--fit-calibration"]) == 2
    assert "--split val" in capsys.readouterr().err


def test_eval_with_training_scenes_as_distractors_widens_the_validation_gallery(
        tiny_dataset, tiny_weights, capsys):
    args = ["eval", "--data", str(tiny_dataset), "--split", "val", "--weights", str(tiny_weights),
            "--cache", str(tiny_weights / "cache"), "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--distractors", "0000"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert (wide["distractors"] == ["2013_05_28_drive_0000_sync"]
            and wide["num_queries"] == plain["num_queries"])
    assert (wide["gallery_cells"] > plain["gallery_cells"]
            and set(wide["published_recall"]) == {"1", "5", "10"})
    # two scenes: also measured laid out as districts of one frame, where an answer in the
    # other scene has an error instead of none, so no share can fall (the answers in their
    # own scene keep their errors up to float64 rounding of the offsets, far below a metre)
    cal = wide["calibration"]
    assert plain["calibration"]["one_frame"] is None
    assert cal["one_frame"]["within_2sigma"] >= cal["within_2sigma"]
    assert cal["one_frame"]["within_1sigma"] >= cal["within_1sigma"]
    assert main(args + ["--distractors", "0003"]) == 2  # a test scene
    assert "test scenes" in capsys.readouterr().err
    assert main(args[:4] + ["test"] + args[5:] + ["--distractors", "0000"]) == 2
    assert "--split val" in capsys.readouterr().err


def test_eval_measures_the_fine_stage_object_order_sensitivity(tiny_dataset, tiny_weights, capsys):
    args = ["eval", "--data", str(tiny_dataset), "--split", "val", "--weights", str(tiny_weights),
            "--cache", str(tiny_weights / "cache"), "--order-sensitivity", "12"]
    assert main(args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)["order_sensitivity"]
    assert r["queries"] == 12 and r["orders"] == 3
    moved, other = r["permuted_move_m"], r["other_cell_move_m"]
    assert 0 <= moved["median"] <= moved["p95"] and moved["p95"] > 0 and other["median"] > 0
    # shuffling objects is a smaller change than another cell
    assert moved["median"] < other["median"]
    assert r["precision_factor"]["median"] >= 1.0
    assert main(args) == 0
    assert "object order (12 val queries x 3 orders)" in capsys.readouterr().out
    assert main(args[:4] + ["test"] + args[5:]) == 2
    assert "--split val" in capsys.readouterr().err


def test_eval_show_draws_the_queries(tiny_dataset, tiny_weights, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["eval", "--data", str(tiny_dataset), "--split", "val",
                 "--weights", str(tiny_weights), "--cache", str(tiny_weights / "cache"),
                 "--show", "2", "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 and "overview.png" in pngs
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "pictures:" in capsys.readouterr().out


def test_bench_reports_every_stage_and_the_latency_over_dds(
        tiny_dataset, tiny_weights, ros_env_here, tmp_path, capsys, monkeypatch):
    params = tmp_path / "params.yaml"
    template = Path(__file__).resolve().parents[1] / "config" / "localize.yaml"
    params.write_text(template.read_text().replace(
        'cache_dir: ""', f'cache_dir: "{tiny_weights / "cache"}"'))
    monkeypatch.chdir(tmp_path)  # the node's log goes to out/ here
    assert main(["bench", "--map", str(tiny_dataset), "--weights", str(tiny_weights),
                 "--queries", "4", "--top-k", "3", "--device", "cpu", "--params-file", str(params),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu" and report["top_k"] == 3 and report["peak_rss_mb"] > 0
    for key in ("end_to_end_ms", "text_ms", "coarse_ms", "fine_ms"):
        assert report[key]["n"] == 4 and 0 < report[key]["median"] <= report[key]["p95"]
    assert report["gallery_build_s"] > 0 and report["gallery_cells"] > 0
    first = report["maps"][0]
    for mode in ("", "_encoder", "_cached"):  # cold, the encoder on every hint, cached
        assert first[f"end_to_end{mode}_ms"]["n"] == 4
    assert report["cpu"]["kernels"] and report["cpu"]["blas"]  # the math paths taken
    dds = report["dds_query_to_pose_ms"]
    assert dds["n"] > 0 and dds["median"] > 0


def test_bench_times_given_texts_and_the_language_front_end(tiny_dataset, tiny_weights,
                                                            tmp_path, capsys):
    texts = tmp_path / "said.jsonl"
    said = ["um i'm north of a grey building and there's a pole to my east",
            "I'm standing on the pavement. A green bin is south of me.",
            "north of a dumpster"]  # a word the encoder has to match
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in said))
    assert main(["bench", "--map", str(tiny_dataset), "--weights", str(tiny_weights),
                 "--texts", str(texts), "--queries", "3", "--top-k", "3", "--device", "cpu",
                 "--no-dds", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    language, text = report["language_ms"], report["text_ms"]
    assert language["n"] == 3 and 0 < language["median"] <= language["p95"]
    assert language["median"] <= text["median"]  # the text stage includes the front end
    texts.write_text("not json\n")
    assert main(["bench", "--map", str(tiny_dataset), "--texts", str(texts)]) == 2
    assert "not a JSONL file" in capsys.readouterr().err


def test_eval_scores_the_front_end_on_queries_that_state_their_facts(tiny_dataset, tiny_weights,
                                                                     tmp_path):
    from spatialoc_ros.data.kitti360pose import load_split
    from spatialoc_ros.data.paraphrase import facts_of, paraphrase_with_facts
    from spatialoc_ros.evaluation.evaluate import evaluate

    rng = np.random.default_rng(0)
    lines = []
    for p in load_split(tiny_dataset, "val").poses[:4]:
        said = paraphrase_with_facts(facts_of(p), "speech", rng, held_out=True)
        lines.append(json.dumps({"text": said.text, "scene": p.scene, "pose_w": list(p.pose_w),
                                 "facts": [list(f) for f in said.facts]}))
    queries = tmp_path / "speech.jsonl"
    queries.write_text("\n".join(lines) + "\n")
    report = evaluate(str(tiny_dataset), "val", str(tiny_weights), queries_file=str(queries),
                      cache=str(tiny_weights / "cache"), progress=False)
    language = report["language"]
    assert language["facts_stated"] == 24 and 0.5 < language["facts_read"] <= 1
    assert 0 <= language["wrong_facts"] < 0.5 and 0 < report["understood"] <= 1
    assert report["queries"] == str(queries)
