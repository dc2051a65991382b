"""Linear probes on features: L-BFGS logistic regression, C fixed or searched as in the CLIP paper.

The paper (appendix A.3) sweeps the regularisation over 1e-6 .. 1e6 on a validation split with a
parametric binary search: it starts at every second decade and halves the interval around the
best value until the step is 1/8 decade; the probe is then fitted on train + validation.
"""

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

SEED_C = 0.316  # OpenAI README's linear-probe example


def _logistic(C: float, max_iter: int, random_state: int) -> LogisticRegression:
    return LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=random_state)


def search_C(
    X_train, y_train, X_val, y_val, low: int = -6, high: int = 6, steps_per_decade: int = 8,
    max_iter: int = 1000, random_state: int = 0,
) -> tuple[float, dict[float, float]]:  # fmt: skip
    """The paper's parametric binary search for C on a validation split: (best C, {C: accuracy}).

    Equal accuracies are decided by the lower validation log-loss.
    """
    scores: dict[float, tuple[float, float]] = {}  # log10 C -> (accuracy, -log loss)

    def evaluate(exponent: float) -> None:
        if low <= exponent <= high and exponent not in scores:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = _logistic(10.0**exponent, max_iter, random_state).fit(X_train, y_train)
            proba = fitted.predict_proba(X_val)
            accuracy = float(np.mean(fitted.classes_[proba.argmax(axis=1)] == y_val))
            scores[exponent] = (accuracy, -log_loss(y_val, proba, labels=fitted.classes_))

    step = 2.0
    for exponent in np.arange(low, high + step / 2, step):
        evaluate(float(exponent))
    best = max(scores, key=scores.get)
    while step > 1 / steps_per_decade:
        step /= 2
        evaluate(best - step)
        evaluate(best + step)
        best = max(scores, key=scores.get)
    return 10.0**best, {10.0**e: s[0] for e, s in sorted(scores.items())}


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Logistic regression on features; C=None searches C on a validation split, as the paper.

    A scikit-learn estimator; score is its accuracy.
    """

    def __init__(
        self,
        *,
        C: float | None = None,
        val_size: float = 0.2,
        max_iter: int = 1000,
        random_state: int = 0,
    ):
        self.C, self.val_size = C, val_size
        self.max_iter, self.random_state = max_iter, random_state

    def fit(self, X, y, X_val=None, y_val=None) -> "LinearProbe":
        """Fit on X (plus X_val if given); with C=None, first choose C on X_val or a split of X."""
        X, y = np.asarray(X), np.asarray(y)
        if (X_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither")
        if self.C is None:
            if X_val is None:
                stratify = y if np.unique(y, return_counts=True)[1].min() >= 2 else None
                X, X_val, y, y_val = train_test_split(
                    X, y, test_size=self.val_size, stratify=stratify, random_state=self.random_state
                )
            self.C_, self.search_ = search_C(X, y, X_val, y_val, max_iter=self.max_iter,
                                             random_state=self.random_state)  # fmt: skip
        else:
            self.C_ = float(self.C)
        if X_val is not None:
            X, y = np.concatenate([X, np.asarray(X_val)]), np.concatenate([y, np.asarray(y_val)])
        self.classifier_ = _logistic(self.C_, self.max_iter, self.random_state).fit(X, y)
        self.classes_ = self.classifier_.classes_
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted labels."""
        check_is_fitted(self)
        return self.classifier_.predict(X)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in classes_ order."""
        check_is_fitted(self)
        return self.classifier_.predict_proba(X)
