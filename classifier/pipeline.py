"""The scikit-learn side of the classifier: features shared by every head, and one linear model per head.

``TextFeatures`` turns raw messages into TF-IDF over jieba word n-grams, TF-IDF over character
n-grams and, optionally, TF-IDF over unordered pairs of words of the message (each block
l2-normalised, then side by side). ``BlendedLinearClassifier`` is a LinearSVC and
a LogisticRegression whose scaled decision scores are added; because both are linear the blend is one
weight matrix, and a softmax with a temperature fitted on out-of-fold scores turns it into calibrated
confidences. Both persist compactly with skops (vocabularies as arrays, never as millions of nodes).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from classifier.text import (
    NativeSegmenter,
    build_dictionary,
    join_words,
    normalise,
    pack_table,
    pack_terms,
    pair_document,
    simplified_table,
    unpack_table,
    unpack_terms,
)

WORD_TOKEN_PATTERN = r"\S+"


BLOCKS = ("word", "char", "pair")


class TextFeatures(TransformerMixin, BaseEstimator):
    """Normalise, segment with jieba, and vectorise: word n-gram TF-IDF ⊕ char n-gram TF-IDF ⊕ word-pair TF-IDF.

    Word pairs (``pair_max_words`` > 0) are every unordered pair of the message's first
    ``pair_max_words`` distinct alphanumeric words, wherever they stand ("card" ... "arrive"): a
    second-order feature a linear model cannot build from unigrams and bigrams. Measured by 5-fold CV on
    Banking77's training split: 0.904 -> 0.908-0.910 accuracy (bench/classifier.py notes).
    """

    def __init__(
        self,
        word_ngram_range: tuple[int, int] = (1, 2),
        char_ngram_range: tuple[int, int] = (1, 4),
        char_analyzer: str = "char_wb",
        word_min_df: int = 1,
        char_min_df: int = 1,
        sublinear_tf: bool = True,
        pair_max_words: int = 0,
        pair_min_df: int = 2,
        n_jobs: int | None = None,
    ):
        self.word_ngram_range = word_ngram_range
        self.char_ngram_range = char_ngram_range
        self.char_analyzer = char_analyzer
        self.word_min_df = word_min_df
        self.char_min_df = char_min_df
        self.sublinear_tf = sublinear_tf
        self.pair_max_words = pair_max_words
        self.pair_min_df = pair_min_df
        self.n_jobs = n_jobs

    # -- fitting and transforming -------------------------------------------------------------

    def _vectorizers(self) -> tuple[TfidfVectorizer, TfidfVectorizer, TfidfVectorizer | None]:
        words = TfidfVectorizer(
            token_pattern=WORD_TOKEN_PATTERN,
            lowercase=False,
            ngram_range=tuple(self.word_ngram_range),
            min_df=self.word_min_df,
            sublinear_tf=self.sublinear_tf,
        )
        chars = TfidfVectorizer(
            analyzer=self.char_analyzer,
            lowercase=False,
            ngram_range=tuple(self.char_ngram_range),
            min_df=self.char_min_df,
            sublinear_tf=self.sublinear_tf,
        )
        pairs = None
        if self.pair_max_words > 0:
            pairs = TfidfVectorizer(
                token_pattern=WORD_TOKEN_PATTERN, lowercase=False, min_df=self.pair_min_df, sublinear_tf=self.sublinear_tf
            )
        return words, chars, pairs

    def fit(self, X: Sequence[str], y=None):
        self.fit_transform(X)
        return self

    def fit_transform(self, X: Sequence[str], y=None, progress: Callable[[], None] | None = None):
        self.simplified_from_, self.simplified_to_ = pack_table(simplified_table())
        self._simplified = None
        normalised = [normalise(t, self.simplified) for t in X]
        words, freqs, total = build_dictionary(normalised)
        self.dictionary_words_ = pack_terms(words)
        self.dictionary_freqs_ = np.array(freqs, dtype=np.int64)
        self.dictionary_total_ = int(total)
        self._segmenter = NativeSegmenter(words, freqs, total)
        segmented = [self._segmenter.words(t) for t in normalised]
        vectorizers = dict(zip(BLOCKS, self._vectorizers()))
        documents = {"word": [join_words(ws) for ws in segmented], "char": normalised}
        if vectorizers["pair"] is not None:
            documents["pair"] = [pair_document(ws, self.pair_max_words) for ws in segmented]
        # The blocks' vocabularies are counted in Python, ~2.5 s each for the char and pair blocks on
        # 10,000 messages: with n_jobs they are fitted side by side in worker processes.
        fits = Parallel(n_jobs=self.n_jobs)(delayed(_fit_block)(vectorizers[name], docs) for name, docs in documents.items())
        fitted = dict(zip(documents, fits))
        for name in ("word", "char"):
            if fitted[name] is None:  # a few texts without a repeated term (min_df): keep every term
                vectorizer = vectorizers[name].set_params(min_df=1)
                fitted[name] = vectorizer, vectorizer.fit_transform(documents[name])  # no term at all: raises
        blocks = []
        for name in BLOCKS:
            # No pair frequent enough (tiny or one-word training sets): no pair block.
            vectorizer, block = fitted.get(name) or (None, None)
            setattr(self, f"{name}_vectorizer_", vectorizer)
            if block is not None:
                blocks.append(block)
        self.n_features_out_ = sum(b.shape[1] for b in blocks)
        return sp.hstack(blocks, format="csr")

    def transform(self, X: Sequence[str]):
        normalised = [normalise(t, self.simplified) for t in X]
        segmented = [self.segmenter.words(t) for t in normalised]
        blocks = [
            self.word_vectorizer_.transform([join_words(ws) for ws in segmented]),
            self.char_vectorizer_.transform(normalised),
        ]
        if getattr(self, "pair_vectorizer_", None) is not None:
            blocks.append(self.pair_vectorizer_.transform([pair_document(ws, self.pair_max_words) for ws in segmented]))
        return sp.hstack(blocks, format="csr")

    @property
    def simplified(self) -> dict[int, str]:
        """The Traditional-to-Simplified table this model was trained with."""
        if getattr(self, "_simplified", None) is None:
            self._simplified = unpack_table(self.simplified_from_, self.simplified_to_)
        return self._simplified

    @property
    def segmenter(self) -> NativeSegmenter:
        if getattr(self, "_segmenter", None) is None:
            self._segmenter = NativeSegmenter(
                unpack_terms(self.dictionary_words_), self.dictionary_freqs_.tolist(), self.dictionary_total_
            )
        return self._segmenter

    # -- compact persistence ------------------------------------------------------------------

    def __getstate__(self):
        # The fitted vectorizers' vocabulary dicts would become one skops node per n-gram (tens
        # of MB); keep them as two arrays in column order and rebuild the dicts on load.
        state = dict(super().__getstate__())
        state.pop("_segmenter", None)
        state.pop("_simplified", None)
        for name in BLOCKS:
            vectorizer = state.pop(f"{name}_vectorizer_", None)
            if vectorizer is not None:
                terms = [""] * len(vectorizer.vocabulary_)
                for term, column in vectorizer.vocabulary_.items():
                    terms[column] = term
                state[f"{name}_terms_"] = pack_terms(terms)
                state[f"{name}_idf_"] = np.asarray(vectorizer.idf_, dtype=np.float64)
        return state

    def __setstate__(self, state):
        state = dict(state)
        state.setdefault("pair_max_words", 0)  # saved before word pairs existed
        state.setdefault("pair_min_df", 2)
        state.setdefault("n_jobs", None)  # saved before blocks could be fitted side by side
        terms = {name: (state.pop(f"{name}_terms_", None), state.pop(f"{name}_idf_", None)) for name in BLOCKS}
        super().__setstate__(state)
        self._segmenter = None
        self._simplified = None
        if terms["word"][0] is None:
            return
        vectorizers = self._vectorizers()
        self.pair_vectorizer_ = None
        for name, vectorizer in zip(BLOCKS, vectorizers):
            vocab, idf = terms[name]
            if vocab is None or vectorizer is None:
                continue
            terms_ = unpack_terms(vocab)
            vectorizer.vocabulary_ = dict(zip(terms_, range(len(terms_))))
            vectorizer.idf_ = idf
            setattr(self, f"{name}_vectorizer_", vectorizer)

    def term_arrays(self) -> dict[str, np.ndarray]:
        """Vocabularies (column order) and idf weights, for the fast path's export (no pair block: empty)."""
        state = self.__getstate__()
        empty = {"pair_terms_": pack_terms([]), "pair_idf_": np.zeros(0)}
        return {k: state.get(k, empty.get(k)) for k in [f"{b}_{a}_" for b in BLOCKS for a in ("terms", "idf")]}


def _fit_block(vectorizer: TfidfVectorizer, documents: Sequence[str]) -> tuple[TfidfVectorizer, sp.csr_matrix] | None:
    """One feature block fitted, or None when no term is frequent enough (min_df) to keep."""
    try:
        return vectorizer, vectorizer.fit_transform(documents)
    except ValueError:
        return None


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def fit_temperature(scores: np.ndarray, y_index: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of softmax(scores / T) (temperature scaling)."""

    def nll(log_t: float) -> float:
        p = softmax(scores / np.exp(log_t))
        return -float(np.mean(np.log(np.clip(p[np.arange(len(y_index)), y_index], 1e-12, None))))

    result = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e3)), method="bounded")
    return float(np.exp(result.x))


class BlendedLinearClassifier(ClassifierMixin, BaseEstimator):
    """LinearSVC + LogisticRegression on scaled scores, one weight matrix, temperature-calibrated.

    ``svc_weight`` is the share of the LinearSVC (1: SVC only, 0: LR only). ``n_jobs`` processes fit
    the final model and the calibration folds side by side (None: one after another, same result).
    ``class_bias`` adds a constant to a class's calibrated score. ``recall_targets`` ({label: recall})
    instead *learns* that constant: the smallest one with which the out-of-fold predictions reach the
    target recall for the label (capped at ``max_bias``), trading that label's precision for recall
    (used for P0). ``stack_C`` (None: off) learns how the classes' scores should be mixed: a multinomial
    LogisticRegression on the calibration folds' out-of-fold scores, whose linear map is folded into
    the weights, so serving still computes one product. It helps where classes sit between others, as
    paidan's priorities do (P1 between P0 and P2), and where many classes share words (Banking77): see
    TrainConfig.stack_C for the cross-validated choice of C.
    """

    def __init__(
        self,
        svc_C: float = 1.0,
        lr_C: float = 30.0,
        svc_weight: float = 1.0,
        class_weight: dict | str | None = None,
        class_bias: dict | None = None,
        recall_targets: dict | None = None,
        max_bias: float = 3.0,
        calibration_folds: int = 3,
        max_iter: int = 1000,
        tol: float = 1e-4,
        random_state: int = 0,
        n_jobs: int | None = None,
        stack_C: float | None = None,
    ):
        self.svc_C = svc_C
        self.lr_C = lr_C
        self.svc_weight = svc_weight
        self.class_weight = class_weight
        self.class_bias = class_bias
        self.recall_targets = recall_targets
        self.max_bias = max_bias
        self.calibration_folds = calibration_folds
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.stack_C = stack_C

    def _linear(self, X, y_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_classes = len(self.classes_)
        class_weight = self.class_weight
        if isinstance(class_weight, dict):
            class_weight = {int(np.searchsorted(self.classes_, k)): v for k, v in class_weight.items() if k in self.classes_}
        coef = np.zeros((n_classes, X.shape[1]))
        intercept = np.zeros(n_classes)
        parts: list[tuple[float, LinearSVC | LogisticRegression]] = []
        with warnings.catch_warnings():
            # A capped iteration count is a deliberate speed/accuracy trade, not a fault to report.
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.svc_weight > 0:
                svc = LinearSVC(
                    C=self.svc_C, class_weight=class_weight, max_iter=self.max_iter, tol=self.tol, random_state=self.random_state
                )
                parts.append((self.svc_weight, svc.fit(X, y_index)))
            if self.svc_weight < 1:
                lr = LogisticRegression(C=self.lr_C, class_weight=class_weight, max_iter=self.max_iter)
                parts.append((1 - self.svc_weight, lr.fit(X, y_index)))
        for share, model in parts:
            w, b = _full_rank(model.coef_, model.intercept_, n_classes)
            # Put both models on one scale (unit spread of training scores) before adding them.
            spread = float(np.std(X @ w.T + b)) or 1.0
            coef += share * w / spread
            intercept += share * b / spread
        return coef, intercept

    def __setstate__(self, state):
        state = dict(state)
        state.setdefault("n_jobs", None)  # saved before fits could run side by side
        state.setdefault("tol", 1e-4)  # saved with LinearSVC's default stopping tolerance
        state.setdefault("stack_C", None)  # saved before scores were stacked (their weights hold what they learnt)
        super().__setstate__(state)

    def fit(self, X, y):
        fit_heads([(self, X, y)], self.n_jobs)
        return self

    def _plan(self, X, y) -> _FitPlan:
        """Learn the label set and the calibration folds; the linear fits themselves are left to run."""
        y = np.asarray(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"need at least two labels to learn, got only {self.classes_.tolist()}")
        folds = min(self.calibration_folds, int(np.bincount(y_index).min()))
        splits = []
        if folds >= 2:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            splits = [(train, test) for train, test in splitter.split(np.zeros(len(y)), y_index)
                      if len(np.unique(y_index[train])) == n_classes]
        return _FitPlan(self, X, y_index, splits)

    def _finish(self, plan: _FitPlan, fits: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Weights from the final fit; temperature and recall biases from the calibration folds' scores."""
        X, y_index, splits = plan.X, plan.y_index, plan.splits
        n_classes = len(self.classes_)
        coef, intercept = fits[0]
        oof = None
        if splits:
            oof = np.zeros((len(y_index), n_classes))
            for (_, test), (w, b) in zip(splits, fits[1:]):
                oof[test] = X[test] @ w.T + b
            if self.stack_C:
                # scores' = M scores + c, learnt on scores the models never trained on; being linear, it
                # becomes the weights M W and intercept M b + c (one product at serving, as before).
                mix, shift = _stacker(oof, y_index, n_classes, self.stack_C)
                coef, intercept, oof = mix @ coef, mix @ intercept + shift, oof @ mix.T + shift
        self.intercept_ = intercept
        # Weights kept at float16 precision (stored as float64, so both paths compute alike): the serving
        # copy is then exactly float16, a quarter of the weights' size at float64. On paidan's held-out
        # and blind splits no label changed and no confidence moved by more than 0.0002 (vs float32).
        # Column-major, so that X @ coef_.T (scikit-learn's and scipy's sparse product) reads it in place:
        # row-major, scipy copied the whole matrix on every call (1.6 ms and 10 MB for one message).
        self.coef_ = np.asfortranarray(coef.astype(np.float16).astype(np.float64))
        self.bias_ = np.zeros(n_classes)
        for label, value in (self.class_bias or {}).items():
            if label in self.classes_:
                self.bias_[int(np.searchsorted(self.classes_, label))] = value
        self.temperature_ = 1.0
        if oof is not None:
            self.temperature_ = fit_temperature(oof, y_index)
            for label, target in (self.recall_targets or {}).items():
                if label in self.classes_:
                    k = int(np.searchsorted(self.classes_, label))
                    self.bias_[k] += _bias_for_recall(oof / self.temperature_, y_index, k, target, self.max_bias)
        self.n_features_in_ = X.shape[1]

    def decision_function(self, X) -> np.ndarray:
        return np.asarray(X @ self.coef_.T) + self.intercept_ + self.bias_ * self.temperature_

    def predict_proba(self, X) -> np.ndarray:
        return softmax(self.decision_function(X) / self.temperature_)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


def _fit_rows(model: BlendedLinearClassifier, X, y_index: np.ndarray, rows: np.ndarray | None):
    """``model``'s linear fit on the given rows (None: all); the rows are taken where the fit runs, so a
    worker process is sent the matrix once, not a copy per fold."""
    if rows is not None:
        X, y_index = X[rows], y_index[rows]
    return model._linear(X, y_index)


@dataclass
class _FitPlan:
    """A model's linear fits still to run: the final one on every row, then one per calibration fold."""

    model: BlendedLinearClassifier
    X: object
    y_index: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]

    @property
    def row_sets(self) -> list[np.ndarray | None]:
        return [None] + [train for train, _ in self.splits]


def fit_heads(models: Sequence[tuple[BlendedLinearClassifier, object, Sequence]], n_jobs: int | None,
              done: Callable[[int], None] | None = None) -> None:
    """Fit several (model, X, y) at once; ``done(i)`` is called as soon as model i is fitted, in order.

    Every model's final and calibration fits are independent, so they share one pool of ``n_jobs``
    worker processes (None: one after another, same result): no core idles at the end of one model
    while the next has fits waiting. Not threads: liblinear draws its coordinate order from one
    process-wide generator, so threads would make fits differ from run to run; each process draws from
    its own, seeded as the sequential fit would be.
    """
    plans = [model._plan(X, y) for model, X, y in models]
    results = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_fit_rows)(plan.model, plan.X, plan.y_index, rows) for plan in plans for rows in plan.row_sets
    )
    for i, plan in enumerate(plans):
        plan.model._finish(plan, [next(results) for _ in plan.row_sets])
        if done:
            done(i)


def _bias_for_recall(scores: np.ndarray, y_index: np.ndarray, k: int, target: float, cap: float) -> float:
    """Smallest bias on class k's score that makes at least ``target`` of its examples predicted k."""
    rows = scores[y_index == k]
    if len(rows) == 0:
        return 0.0
    others = np.delete(rows, k, axis=1).max(axis=1)
    needed = np.sort(others - rows[:, k])  # bias each example needs to be predicted k (<= 0: already is)
    index = min(len(needed) - 1, max(0, int(np.ceil(target * len(needed))) - 1))
    return float(np.clip(needed[index] + 1e-6, 0.0, cap))


def _stacker(scores: np.ndarray, y_index: np.ndarray, n_classes: int, C: float) -> tuple[np.ndarray, np.ndarray]:
    """The (n_classes × n_classes) map and shift of a multinomial LogisticRegression on out-of-fold scores.
    One BLAS thread: the fit is small, and a pool of threads fought the other heads' worker processes."""
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr = LogisticRegression(C=C, tol=1e-3, max_iter=300).fit(scores, y_index)
    return _full_rank(lr.coef_, lr.intercept_, n_classes)


def _full_rank(coef: np.ndarray, intercept: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One row per class: a binary model's single row w becomes (-w/2, +w/2), same softmax as sigmoid."""
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    if n_classes == 2 and coef.shape[0] == 1:
        return np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef, intercept

