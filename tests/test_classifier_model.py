"""The trained classifier: fast path == scikit-learn pipeline, bad input, the model store, the gate, CSV errors."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from classifier.data import TAXONOMY, Example, read_csv
from classifier.errors import ModelIncompatible, ModelNotFound, TrainingDataError
from classifier.evaluate import evaluate_examples, head_metrics
from classifier.explain import explain
from classifier.fast import FastModel
from classifier.service import SERVICE_HEADS, ModelClassifier
from classifier.store import METADATA_FILE, MODEL_FILE, ModelStore, load_skops, sha256_file
from classifier.text import PAIR_JOINER
from classifier.train import TrainConfig, fit_model, gate, load_split, train_version
from models.prediction import Classifier, Prediction

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "training_data"
LOW_CONFIDENCE = 0.5

pytestmark = pytest.mark.skipif(not (DATA / "train").is_dir(), reason="training_data/train is absent")

ODD_TEXTS = [
    "",
    "   \n\t ",
    "😀😂🙏🔥" * 5,
    "Привет, у меня не работает оплата картой",  # a language the training data does not have
    "مرحبا، لا أستطيع تسجيل الدخول",
    "".join(chr(c) for c in random.Random(1).choices(range(0x20, 0xFFFF), k=3000)),  # binary-ish junk
    bytes(random.Random(2).choices(range(256), k=2000)).decode("latin-1"),
    "ＡＬＬ ＵＳＥＲＳ 全部用户无法登录！！！",
    "收银机 " * 2000,
]


@pytest.fixture(scope="module")
def split() -> tuple[list[Example], list[Example]]:
    train, _ = load_split(DATA, "train")
    heldout, _ = load_split(DATA, "heldout")
    return train, heldout


@pytest.fixture(scope="module")
def trained(split):
    return fit_model(split[0], SERVICE_HEADS, TrainConfig(calibration_folds=2))


@pytest.fixture(scope="module")
def classifier(trained) -> ModelClassifier:
    return trained.classifier("test")


def test_fast_path_gives_the_same_predictions_as_the_sklearn_pipeline(trained, classifier, split) -> None:
    texts = [e.text for e in split[1]] + [e.text for e in split[0][:300]] + ODD_TEXTS
    for head in SERVICE_HEADS:
        expected = trained.pipeline(head).predict_proba(texts)
        labels = trained.pipeline(head).predict(texts)
        fast = np.array([classifier.fast.scores(t)[0][head].probabilities for t in texts])
        fast_labels = [classifier.fast.scores(t)[0][head].best[0] for t in texts]
        assert fast_labels == labels.tolist()
        np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "config",
    [
        # "char" crosses word boundaries; char_wb 4-6 makes short words ("a" padded is 3 long) one n-gram each
        TrainConfig(char_analyzer="char", char_ngram_range=(2, 5), word_ngram_range=(1, 3), calibration_folds=0),
        TrainConfig(char_analyzer="char_wb", char_ngram_range=(4, 6), word_ngram_range=(2, 2), calibration_folds=0),
        TrainConfig(pair_max_words=0, calibration_folds=0),  # no word-pair block (the layout before pairs)
        TrainConfig(pair_max_words=4, pair_min_df=1, calibration_folds=0),  # long messages: only 4 words pair up
    ],
    ids=["char-2-5-words-1-3", "char_wb-4-6-bigrams", "no-pairs", "pairs-of-4-words"],
)
def test_fast_path_equals_the_pipeline_for_other_ngram_settings(split, config) -> None:
    train = split[0][::6]
    texts = [e.text for e in split[1][:200]] + [e.text for e in train[:50]] + ODD_TEXTS + ["a b c", "x", "我 你 a 他"]
    model = fit_model(train, ["type"], config)
    fast = model.classifier("settings").fast
    np.testing.assert_allclose(
        fast.probabilities_many(texts)[0]["type"], model.pipeline("type").predict_proba(texts), rtol=0, atol=1e-9
    )
    single = np.array([fast.scores(t)[0]["type"].probabilities for t in texts])
    np.testing.assert_allclose(single, model.pipeline("type").predict_proba(texts), rtol=0, atol=1e-9)


def test_fitting_in_worker_processes_gives_the_same_model(split) -> None:
    # n_jobs only changes where the fits run: the same vocabularies, weights, temperature and P0 bias.
    train = split[0][::4]
    config = TrainConfig(calibration_folds=3, recall_targets={"priority": {"P0": 0.95}}, n_jobs=None)
    alone = fit_model(train, ["type", "priority"], config)
    side_by_side = fit_model(train, ["type", "priority"], dataclasses.replace(config, n_jobs=2))
    assert side_by_side.features.n_jobs == 2 and side_by_side.heads["priority"].n_jobs == 2
    expected, got = alone.serving_arrays(), side_by_side.serving_arrays()
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert side_by_side.heads["priority"].bias_[0] > 0  # the recall target did learn a bias


def test_a_batch_too_big_for_64_bit_keys_is_scored_in_chunks(classifier, split) -> None:
    # A batch key is row * key_space + the n-gram's key: chunks keep it within 64 bits (and memory bounded).
    texts = [e.text for e in split[1][:40]] + ODD_TEXTS
    small = copy.copy(classifier.fast)
    small.batch_limit = 7
    whole, chunked = classifier.fast.probabilities_many(texts), small.probabilities_many(texts)
    for head in SERVICE_HEADS:
        np.testing.assert_allclose(chunked[0][head], whole[0][head], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(chunked[1], whole[1])
    assert chunked[2] == whole[2]


def test_n_grams_too_long_for_64_bit_keys_are_refused_clearly(split) -> None:
    model = fit_model(split[0][::20], ["type"], TrainConfig(char_ngram_range=(1, 9), calibration_folds=0))
    with pytest.raises(ValueError, match=r"n-grams too long for 64-bit keys: \d+ characters up to 9 long"):
        model.classifier("too long")


def test_serving_arrays_without_pairs_still_load(split) -> None:
    # Models saved before the word-pair block (serving format 2) have no pair arrays.
    model = fit_model(split[0][::6], ["type"], TrainConfig(pair_max_words=0, calibration_folds=0))
    arrays = model.serving_arrays()
    old = {k: v for k, v in arrays.items() if not k.startswith("pair_")} | {"format": np.array(2)}
    texts = [e.text for e in split[1][:50]]
    np.testing.assert_allclose(
        FastModel(old).probabilities_many(texts)[0]["type"], model.pipeline("type").predict_proba(texts), rtol=0, atol=1e-9
    )


def _same(a: Prediction, b: Prediction) -> bool:
    """Equal labels and rules; confidences equal up to float summation order (sparse vs dense product)."""
    return a.rules == b.rules and all(
        getattr(a, h).label == getattr(b, h).label and abs(getattr(a, h).confidence - getattr(b, h).confidence) < 1e-9
        for h in SERVICE_HEADS
    )


def test_predict_many_equals_predict(classifier, split) -> None:
    texts = [e.text for e in split[1][:150]] + ODD_TEXTS
    many = classifier.predict_many(texts)
    assert len(many) == len(texts)
    assert all(_same(m, classifier.predict(t)) for m, t in zip(many, texts))
    assert classifier.predict_many([]) == []


def test_classifier_satisfies_the_protocol(classifier) -> None:
    assert isinstance(classifier, Classifier)
    prediction = classifier.predict("你们的支付网关是不是挂了？所有订单都支付失败")
    assert isinstance(prediction, Prediction)
    assert prediction.priority.label == "P0" and "payment_system_down" in prediction.rules
    assert json.loads(json.dumps(prediction.as_dict()))["priority"]["label"] == "P0"


@pytest.mark.parametrize("index", range(7))
def test_bad_input_gives_a_valid_low_confidence_prediction(classifier, index: int) -> None:
    prediction = classifier.predict(ODD_TEXTS[index])
    for head in SERVICE_HEADS:
        score = getattr(prediction, head)
        assert score.label in TAXONOMY[head]
        assert 0.0 <= score.confidence < LOW_CONFIDENCE, (head, score)
    assert prediction.rules == ()


def test_real_messages_are_not_damped_like_junk(classifier, split) -> None:
    from classifier.service import COVERAGE_FULL

    coverage = [classifier.predict_heads(e.text).coverage for e in split[1]]
    assert sum(c >= COVERAGE_FULL for c in coverage) / len(coverage) >= 0.9


def test_100_kb_of_text_is_classified_quickly(classifier) -> None:
    junk = "".join(random.Random(3).choices("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严", k=100_000))
    started = time.perf_counter()
    prediction = classifier.predict(junk)
    assert time.perf_counter() - started < 1.0
    assert prediction.type.label in TAXONOMY["type"]


def test_store_round_trip_and_metadata(tmp_path, trained, classifier) -> None:
    store = ModelStore(tmp_path / "models")
    metadata = {"heads": {h: {"labels": trained.heads[h].classes_.tolist()} for h in SERVICE_HEADS},
                "training_data": {"sha256": "ab" * 32}, "heldout": {}}
    path = store.save(trained, trained.serving_arrays(), metadata)
    assert store.active() is None
    store.promote(path.name)
    loaded = ModelClassifier.load_active(store.root)
    texts = ["我们所有门店的收银机都连不上", "when will my refund arrive?", "希望增加夜间模式", ""]
    assert all(_same(a, b) for a, b in zip(loaded.predict_many(texts), classifier.predict_many(texts)))
    assert loaded.version == path.name
    meta = json.loads((path / METADATA_FILE).read_text())
    for key in ("schema_version", "created_at", "libraries", "training_data", "heads", "files"):
        assert key in meta
    assert {"scikit-learn", "numpy", "jieba", "skops", "python"} <= set(meta["libraries"])
    objects, _ = load_skops(path)
    again = objects["heads"]["type"].predict_proba(objects["features"].transform(texts))
    np.testing.assert_allclose(again, trained.pipeline("type").predict_proba(texts), atol=1e-12)
    # A pickle is never written; the model is an explicit-allow-list skops file plus plain arrays.
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "model.skops", "serving.npz"]


def _rewrite_metadata(path: Path, change) -> None:
    meta = json.loads((path / METADATA_FILE).read_text())
    change(meta)
    (path / METADATA_FILE).write_text(json.dumps(meta))


def test_loading_checks_versions_format_and_checksums(tmp_path, trained) -> None:
    store = ModelStore(tmp_path)
    path = store.save(trained, trained.serving_arrays(), {"training_data": {"sha256": "cd" * 32}})

    _rewrite_metadata(path, lambda m: m["libraries"].update({"scikit-learn": "0.24.2"}))
    with pytest.raises(ModelIncompatible, match=r"trained with scikit-learn 0\.24\.2.*retrain with `paidan train`"):
        load_skops(path)
    ModelClassifier.load(path)  # serving does not use scikit-learn, so it still loads

    _rewrite_metadata(path, lambda m: m["libraries"].update({"jieba": "0.39"}))
    with pytest.raises(ModelIncompatible, match=r"trained with jieba 0\.39"):
        ModelClassifier.load(path)

    _rewrite_metadata(path, lambda m: m.update({"schema_version": 99}))
    with pytest.raises(ModelIncompatible, match=r"format 99"):
        ModelClassifier.load(path)

    other = store.save(trained, trained.serving_arrays(), {"training_data": {"sha256": "ef" * 32}})
    with (other / "serving.npz").open("r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(ModelIncompatible, match="checksum"):
        ModelClassifier.load(other)
    with pytest.raises(ModelNotFound, match="no active model"):
        store.active_path()
    with pytest.raises(ModelNotFound, match="no model version 'nope'"):
        store.path("nope")


def test_skops_file_with_unexpected_types_is_refused(tmp_path, trained) -> None:
    import skops.io as sio
    from sklearn.svm import LinearSVC

    path = ModelStore(tmp_path).save(trained, trained.serving_arrays(), {})
    sio.dump({"features": LinearSVC(), "heads": {}}, path / MODEL_FILE)
    _rewrite_metadata(path, lambda m: m["files"].update({MODEL_FILE: sha256_file(path / MODEL_FILE)}))
    with pytest.raises(ModelIncompatible, match="allow-list"):
        load_skops(path)


def test_promote_and_rollback(tmp_path, trained) -> None:
    store = ModelStore(tmp_path)
    a = store.save(trained, trained.serving_arrays(), {}).name
    b = store.save(trained, trained.serving_arrays(), {}).name
    with pytest.raises(ModelNotFound, match="nothing to roll back"):
        store.promote(a) or store.rollback()
    store.promote(b)
    assert store.active() == b
    assert store.rollback() == a
    assert store.active() == a
    assert [v.active for v in store.versions()] == [True, False]


def test_gate_blocks_a_drop_of_more_than_one_point() -> None:
    old = {"type": {"macro_f1": 0.90}, "priority": {"macro_f1": 0.80}}
    assert gate(old, {"type": {"macro_f1": 0.895}, "priority": {"macro_f1": 0.85}}) == (True, [])
    ok, reasons = gate(old, {"type": {"macro_f1": 0.95}, "priority": {"macro_f1": 0.785}})
    assert not ok and "priority" in reasons[0]
    assert gate(None, {"type": {"macro_f1": 0.1}})[0]


def _write_split(directory: Path, name: str, examples: list[Example], shuffle_labels: bool = False) -> None:
    (directory / name).mkdir(parents=True, exist_ok=True)
    labels = [dict(e.labels) for e in examples]
    if shuffle_labels:
        rng = random.Random(0)
        for head in SERVICE_HEADS:
            column = [l[head] for l in labels]
            rng.shuffle(column)
            for l, v in zip(labels, column):
                l[head] = v
    with (directory / name / "data.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", *SERVICE_HEADS])
        for e, l in zip(examples, labels):
            writer.writerow([e.text, *(l[h] for h in SERVICE_HEADS)])


def test_a_worse_model_is_not_promoted_without_force(tmp_path, split) -> None:
    train, heldout = split
    good, bad = tmp_path / "good", tmp_path / "bad"
    _write_split(good, "train", train[:800])
    _write_split(bad, "train", train[:800], shuffle_labels=True)
    for d in (good, bad):
        _write_split(d, "heldout", heldout)
    store = ModelStore(tmp_path / "models")
    config = TrainConfig(calibration_folds=0)
    first = train_version(good, store, config=config)
    assert first.promoted and store.active() == first.version
    worse = train_version(bad, store, config=config)
    assert not worse.promoted and store.active() == first.version
    assert any("macro-F1" in r for r in worse.reasons)
    assert worse.path.is_dir()  # kept for inspection
    forced = train_version(bad, store, config=config, force=True)
    assert forced.promoted and store.active() == forced.version


def test_evaluation_metrics_on_a_known_case() -> None:
    m = head_metrics("priority", ["P0", "P0", "P1", "P2"], ["P0", "P1", "P1", "P2"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["P0"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["confusion"] == {"labels": ["P0", "P1", "P2"], "matrix": [[1, 1, 0], [0, 1, 0], [0, 0, 1]]}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_heldout_report_counts_p0_rule_effects(classifier, split) -> None:
    metrics = evaluate_examples(classifier, split[1], SERVICE_HEADS)
    p0 = metrics["priority"]["p0"]
    assert p0["with_rules"]["recall"] >= p0["model_only"]["recall"]
    assert p0["with_rules"]["support"] == sum(e.labels["priority"] == "P0" for e in split[1])


# -- CSV errors name the file and the row ---------------------------------------------------------


def _csv(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_csv_missing_column_names_the_file(tmp_path) -> None:
    path = _csv(tmp_path, "text,type,category\nhello,inquiry,service\n", "no_priority.csv")
    with pytest.raises(TrainingDataError, match=r"no_priority\.csv: missing column 'priority'"):
        read_csv(path, SERVICE_HEADS)


def test_csv_unknown_label_names_file_and_row(tmp_path) -> None:
    path = _csv(tmp_path, "text,type,category,priority\nhello,inquiry,service,P3\n\"two\nlines\",inquiry,service,P3\nurgent,incident,technical,P5\n")
    with pytest.raises(TrainingDataError, match=r"data\.csv, row 3 \(line 5\): unknown priority label 'P5'") as e:
        read_csv(path, SERVICE_HEADS, label_sets=TAXONOMY)
    assert e.value.row == 3


def test_csv_bad_encoding_names_file_and_row(tmp_path) -> None:
    content = "text,type\n在吗,inquiry\n你好,inquiry\n".encode() + "坏编码,inquiry\n".encode("gbk")
    path = _csv(tmp_path, content, "gbk.csv")
    with pytest.raises(TrainingDataError, match=r"gbk\.csv, row 3: not valid UTF-8"):
        read_csv(path, ["type"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,type\n,inquiry\n", r"row 1: empty text"),
        ("text,type\nhello,\n", r"row 1: empty 'type' label"),
        ("text,type\nhello,inquiry,extra\n", r"row 1: the row has a different number of fields"),
        ("", r"empty file"),
    ],
)
def test_csv_row_problems(tmp_path, content: str, message: str) -> None:
    with pytest.raises(TrainingDataError, match=message):
        read_csv(_csv(tmp_path, content), ["type"])


def test_a_deployment_can_bring_its_own_label_sets(tmp_path) -> None:
    from classifier.train import label_sets

    assert label_sets(tmp_path) == TAXONOMY
    (tmp_path / "labels.json").write_text('{"type": ["ask", "fault"], "category": ["it", "ops"], "priority": ["P0", "P1"]}')
    assert label_sets(tmp_path)["type"] == ("ask", "fault")
    (tmp_path / "labels.json").write_text('{"type": ["ask"]}')
    with pytest.raises(TrainingDataError, match=r"labels\.json"):
        label_sets(tmp_path)


def test_explanations_add_up_to_the_models_log_odds_and_name_the_messages_own_words(classifier, split) -> None:
    fast = classifier.fast
    for text in [e.text for e in split[1][:150]] + ODD_TEXTS:
        scores, _coverage, normalised = fast.scores(text)
        words = " ".join(fast.segmenter.words(normalised))
        for head, reason in explain(fast, text).items():
            p = dict(zip(scores[head].labels, scores[head].probabilities))
            assert reason.label == scores[head].best[0]
            assert reason.log_odds == pytest.approx(np.log(p[reason.label] / p[reason.runner_up]), abs=1e-9)
            weights = [c.weight for c in reason.cues]
            assert weights == sorted(weights, reverse=True) and all(w > 0 for w in weights)
            for cue in reason.cues:  # every cue is in the message, as the model segmented it
                if cue.kind == "word":
                    assert cue.term in words
                elif cue.kind == "chars":
                    assert cue.term in f" {normalised} "
                else:
                    assert all(w in words.split() for w in cue.term.split(PAIR_JOINER))


def test_explanation_cues_are_the_pipelines_own_contributions(trained, classifier, split) -> None:
    # Independently of the fast path: the scikit-learn features and coefficients, named by the vectorizers.
    features = trained.features
    blocks = [features.word_vectorizer_, features.char_vectorizer_, features.pair_vectorizer_]
    names = np.concatenate([b.get_feature_names_out() for b in blocks if b is not None])
    readable = np.array([any(ch.isalnum() for ch in name) for name in names])  # explain() leaves out the rest
    for text in [e.text for e in split[1][:40]]:
        x = features.transform([text]).toarray()[0]
        for head, reason in explain(classifier.fast, text).items():
            model = trained.heads[head]
            best, runner_up = (list(model.classes_).index(label) for label in (reason.label, reason.runner_up))
            contribution = x * (model.coef_[best] - model.coef_[runner_up]) / model.temperature_
            expected = np.sort(contribution[(contribution > 0) & readable])[::-1][: len(reason.cues)]
            np.testing.assert_allclose([c.weight for c in reason.cues], expected, rtol=0, atol=1e-9)
            for cue in reason.cues:
                assert cue.term in set(names[np.abs(contribution - cue.weight) < 1e-9]), (head, cue)



def test_serve_follows_the_active_model_without_a_restart(tmp_path, trained, caplog) -> None:
    from paidan.service import ActiveModel

    store = ModelStore(tmp_path / "models")
    now = [0.0]
    active = ActiveModel(store.root, check_seconds=5, clock=lambda: now[0])
    with caplog.at_level("ERROR", logger="paidan"):
        assert active() is None  # no model yet: tickets go to triage, and the log says what to run
    assert "paidan model ensure" in caplog.text

    first = store.save(trained, trained.serving_arrays(), {"training_data": {"sha256": "01" * 32}})
    store.promote(first.name)
    assert active() is None  # not looked at again before check_seconds have passed
    now[0] = 5
    assert active().version == first.name

    second = store.save(trained, trained.serving_arrays(), {"training_data": {"sha256": "02" * 32}})
    store.promote(second.name)  # `paidan train` promoting a retrained model
    now[0] = 10
    assert active().version == second.name

    broken = store.save(trained, trained.serving_arrays(), {"training_data": {"sha256": "03" * 32}})
    (broken / "serving.npz").write_bytes(b"not a model")
    store.promote(broken.name)
    caplog.clear()
    now[0] = 15
    with caplog.at_level("ERROR", logger="paidan"):
        assert active().version == second.name  # the model in use is kept
        now[0] = 20
        active()
    assert caplog.text.count(f"classifier model {broken.name} cannot be used") == 1  # said once, not every check

    store.rollback()  # back to the second
    now[0] = 25
    assert active().version == second.name


def test_stacked_scores_are_one_linear_map_folded_into_the_weights() -> None:
    """The stacker learns scores' = M scores + c on out-of-fold scores; serving is still one product. A
    class between two others (B between A and C on one axis) has no good one-vs-rest line of its own;
    mixed with its neighbours' scores, it is found more often."""
    from classifier.pipeline import BlendedLinearClassifier

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 900)
    X = np.column_stack([y * 2.0 + rng.normal(0, 0.5, 900), rng.normal(0, 1, (900, 3))])
    train, test = slice(0, 600), slice(600, None)
    plain = BlendedLinearClassifier(stack_C=None).fit(X[train], y[train])
    stacked = BlendedLinearClassifier(stack_C=0.3).fit(X[train], y[train])
    assert stacked.coef_.shape == plain.coef_.shape and not np.allclose(stacked.coef_, plain.coef_)
    scores = X[test] @ stacked.coef_.T + stacked.intercept_ + stacked.bias_ * stacked.temperature_
    assert np.allclose(stacked.decision_function(X[test]), scores)

    def recall_of_b(model) -> float:
        return float((model.predict(X[test])[y[test] == 1] == 1).mean())

    assert recall_of_b(stacked) > recall_of_b(plain) + 0.03  # 0.96 against 0.91
    # A model saved before stacking existed loads as unstacked and predicts as it did.
    state = stacked.__getstate__()
    del state["stack_C"]
    old = BlendedLinearClassifier.__new__(BlendedLinearClassifier)
    old.__setstate__(state)
    assert old.stack_C is None and (old.predict(X[test]) == stacked.predict(X[test])).all()
