"""scikit-learn's own estimator checks, in full, and the transformer's behaviour."""

from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import nsa_flow_rs as nf  # noqa: E402
from nsa_flow_rs.sklearn import NSAFlow  # noqa: E402


@parametrize_with_checks([NSAFlow(n_components=2), NSAFlow(n_components=1, mode="data", center=False)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_fit_transform_and_attributes(rng):
    x = np.abs(rng.standard_normal((50, 8)))
    est = NSAFlow(n_components=3, w=0.4, mode="data")
    z = est.fit_transform(x)
    r = nf.nsa_flow(x - x.mean(0), 3, 0.4, mode="data", init="auto")
    assert np.array_equal(est.components_, r.Y.T)
    assert np.allclose(z, (x - x.mean(0)) @ r.Y)
    assert est.n_iter_ == r.iters and est.converged_ and est.grad_map_ == r.grad_map
    assert list(est.get_feature_names_out()) == ["nsaflow0", "nsaflow1", "nsaflow2"]
    assert np.allclose(est.mean_, x.mean(0))
    nc = NSAFlow(n_components=3, center=False, mode="data").fit(x)
    assert np.array_equal(nc.mean_, np.zeros(8))
    with pytest.raises(ValueError):
        NSAFlow(n_components=9).fit(x)
    with pytest.raises(ValueError):
        NSAFlow(n_components=2, mode="anchored").fit(x)
    with pytest.raises(ValueError):
        NSAFlow(n_components=2, w=3).fit(x)


def test_set_output_pandas(rng):
    pd = pytest.importorskip("pandas")
    x = pd.DataFrame(np.abs(rng.standard_normal((30, 5))), columns=list("abcde"))
    est = NSAFlow(n_components=2).set_output(transform="pandas")
    out = est.fit_transform(x)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["nsaflow0", "nsaflow1"]
    assert list(est.feature_names_in_) == list("abcde")


def test_in_a_pipeline_with_grid_search(rng):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.linear_model import LinearRegression

    x = np.abs(rng.standard_normal((40, 6)))
    y = x[:, 0] + x[:, 1]
    pipe = make_pipeline(NSAFlow(n_components=2), LinearRegression())
    gs = GridSearchCV(pipe, {"nsaflow__w": [0.2, 0.8]}, cv=2).fit(x, y)
    assert gs.best_params_["nsaflow__w"] in (0.2, 0.8)
