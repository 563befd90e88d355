import numpy as np
import pytest

from mlff_distiller import keys
from mlff_distiller.evaluation.metrics import error_metrics, per_system_errors


def _arrays():
    # two structures: 2 atoms (system a) and 1 atom (system b)
    return {
        "ptr": np.array([0, 2, 3]),
        "numbers": np.array([1, 8, 1]),
        keys.TEACHER_ENERGY: np.array([-2.0, -1.0]),
        keys.TEACHER_FORCES: np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0]]),
        keys.TEACHER_STRESS: np.zeros((2, 3, 3)),
        "has_stress": np.array([False, False]),
        keys.SYSTEM_ID: np.array(["a", "b"], dtype=object),
    }


def test_metrics_by_hand():
    pred = {
        keys.ENERGY: np.array([-1.9, -1.0]),  # 0.1 eV over 2 atoms -> 50 meV/atom
        keys.FORCES: np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 2.0]]),  # one flipped
    }
    m = error_metrics(pred, _arrays())
    assert m["energy_mae_mev_per_atom"] == pytest.approx(25.0)
    assert m["energy_rmse_mev_per_atom"] == pytest.approx(np.sqrt(50.0**2 / 2))
    assert m["force_mae_ev_per_a"] == pytest.approx(2.0 / 9)
    assert m["force_rmse_ev_per_a"] == pytest.approx(np.sqrt(4.0 / 9))
    assert m["force_cosine"] == pytest.approx((1 - 1 + 1) / 3)
    assert m["force_rmse_per_element_ev_per_a"]["O"] == pytest.approx(np.sqrt(4.0 / 3))
    assert m["force_rmse_per_element_ev_per_a"]["H"] == pytest.approx(0.0)
    per = per_system_errors(pred, _arrays())
    assert per["a"]["energy_mae_mev_per_atom"] == pytest.approx(50.0)
    assert per["a"]["force_rmse_ev_per_a"] == pytest.approx(np.sqrt(4.0 / 6))
    assert per["b"] == {"energy_mae_mev_per_atom": 0.0, "force_rmse_ev_per_a": 0.0}
