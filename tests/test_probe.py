"""workbench.probe: the paper's C search and the seed's fixed-C logistic-regression probe."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

from workbench import data
from workbench.features import image_features
from workbench.probe import SEED_C, LinearProbe, search_C


def _blobs(n: int, seed: int, classes: int = 3, width: int = 16, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, (classes, width))
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(0, spread, (n, width))).astype(np.float32), y


def test_search_is_the_papers_parametric_binary_search():
    (x, y), (xv, yv) = _blobs(90, 0, spread=3.0), _blobs(60, 1, spread=3.0)
    best, history = search_C(x, y, xv, yv)
    exponents = np.log10(list(history))
    assert 1e-6 <= best <= 1e6 and best in history
    assert set(np.arange(-6, 7, 2)) <= set(np.round(exponents, 6))  # the coarse sweep
    assert len(history) <= 7 + 2 * 4  # then 4 halvings, two points each: 2, 1, 1/2, 1/4, 1/8
    assert np.allclose(exponents * 8, np.round(exponents * 8))  # resolution 8 steps per decade
    fine = exponents[~np.isin(np.round(exponents, 6), np.arange(-6, 7, 2))]
    assert len(fine) >= 4 and np.all(np.abs(fine - np.log10(best)) <= 2)  # all around the peak
    assert history[best] == max(history.values())
    exact = LogisticRegression(C=best, max_iter=1000, random_state=0).fit(x, y).score(xv, yv)
    assert history[best] == pytest.approx(exact)


def test_probe_with_search_fits_train_plus_validation():
    (x, y), (xv, yv), (xt, yt) = _blobs(120, 0), _blobs(60, 1), _blobs(300, 2)
    probe = LinearProbe().fit(x, y, xv, yv)
    assert 1e-6 <= probe.C_ <= 1e6 and probe.score(xt, yt) >= 0.95
    final = LogisticRegression(C=probe.C_, max_iter=1000, random_state=0)
    final.fit(np.concatenate([x, xv]), np.concatenate([y, yv]))
    np.testing.assert_allclose(probe.classifier_.coef_, final.coef_, rtol=1e-6, atol=1e-8)
    alone = LinearProbe(random_state=0).fit(x, y)  # validation split carved out of train
    assert 1e-6 <= alone.C_ <= 1e6 and alone.score(xt, yt) >= 0.95
    np.testing.assert_array_equal(alone.classes_, [0, 1, 2])


def test_seed_form_is_openais_readme_classifier():
    (x, y), (xt, yt) = _blobs(150, 0, spread=2.0), _blobs(150, 2, spread=2.0)
    probe = LinearProbe(C=SEED_C).fit(x, y)
    readme = LogisticRegression(random_state=0, C=0.316, max_iter=1000).fit(x, y)
    assert probe.C_ == 0.316 and not hasattr(probe, "search_")
    np.testing.assert_array_equal(probe.predict(xt), readme.predict(xt))
    np.testing.assert_allclose(probe.predict_proba(xt), readme.predict_proba(xt), rtol=1e-6)
    assert probe.score(xt, yt) == pytest.approx(readme.score(xt, yt))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_seed_linear_probe_flow_on_cifar100_format_data(tiny_clip, cifar_shapes):
    model, preprocess = tiny_clip
    train = data.cifar100(cifar_shapes[0], "train", label="coarse")[:200]
    test = data.cifar100(cifar_shapes[0], "test", label="coarse")[:100]
    x = image_features(model, preprocess, train, progress=False)
    xt = image_features(model, preprocess, test, progress=False)
    same = (7 * np.arange(100) + 3) % 100  # conftest tiles 100 images: test j is train same[j]
    # the search fits on a stratified 80 % and refits on it plus the 20 % held for validation
    fit, held, y_fit, y_held = train_test_split(x, train.labels, test_size=0.2,
                                                stratify=train.labels, random_state=0)  # fmt: skip
    refit = {SEED_C: (x, train.labels), None: (np.concatenate([fit, held]),
                                               np.concatenate([y_fit, y_held]))}  # fmt: skip
    scores = {}
    for C in (SEED_C, None):
        probe = LinearProbe(C=C).fit(x, train.labels)
        np.testing.assert_array_equal(probe.predict(xt), probe.predict(x[same]))
        scores[C] = probe.score(xt, test.labels)
        direct = LogisticRegression(C=probe.C_, max_iter=1000, random_state=0).fit(*refit[C])
        assert scores[C] == pytest.approx(direct.score(xt, test.labels))
    # a random model's features need a large C: the search finds one, the seed's 0.316 underfits
    assert scores[None] >= 0.7 and scores[None] > 2 * scores[SEED_C], scores  # chance: 0.2


def test_a_scikit_learn_estimator():
    (x, y), (xt, yt) = _blobs(90, 0, spread=6.0), _blobs(90, 2, spread=6.0)
    with pytest.raises(TypeError):
        LinearProbe(0.1)  # options are keyword-only
    copy = clone(LinearProbe(C=0.5, max_iter=200).fit(x, y))
    assert copy.get_params() == dict(C=0.5, val_size=0.2, max_iter=200, random_state=0)
    with pytest.raises(NotFittedError):
        copy.predict(x)
    grid = [1e-4, 1e-2, 1.0]
    search = GridSearchCV(LinearProbe(), {"C": grid}, cv=StratifiedKFold(3)).fit(x, y)
    expected = [
        np.mean([LogisticRegression(C=C, max_iter=1000, random_state=0).fit(x[a], y[a])
                 .score(x[b], y[b]) for a, b in StratifiedKFold(3).split(x, y)])
        for C in grid
    ]  # fmt: skip
    assert len(set(expected)) > 1, expected  # the search has something to choose
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], expected)
    best = grid[int(np.argmax(expected))]
    assert search.best_params_ == {"C": best} and search.best_estimator_.C_ == best
    final = LogisticRegression(C=best, max_iter=1000, random_state=0).fit(x, y)
    np.testing.assert_array_equal(search.predict(xt), final.predict(xt))
    assert search.score(xt, yt) == pytest.approx(final.score(xt, yt))


def test_bad_use_is_named():
    with pytest.raises(NotFittedError):
        LinearProbe().predict(np.zeros((1, 3)))
    with pytest.raises(NotFittedError):
        LinearProbe().predict_proba(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="both X_val and y_val"):
        LinearProbe().fit(np.zeros((4, 3)), [0, 1, 0, 1], X_val=np.zeros((2, 3)))
