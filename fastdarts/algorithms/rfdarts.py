"""RF-DARTS and RF-PCDARTS (random features; ALGORITHMS.md §2.3): DARTS / PC-DARTS on a
supernet whose convolutions keep their random initialisation, with only the BatchNorm affine
parameters (every BN made affine) and, by default, the classifier trained
(`fastdarts.random_features`). The alphas (and PC-DARTS's betas) are trained exactly as in
DARTS / PC-DARTS, with their hyperparameters. The features are drawn from `rf_seed` (the run
seed by default), which the run log and result.json record.
"""
from __future__ import annotations

from ..random_features import freeze_random_features
from .darts import DARTS
from .pcdarts import PCDARTS

__all__ = ["RFDARTS", "RFPCDARTS"]


class _RandomFeatures:
    """Mixin over DARTS / PC-DARTS: the affine supernet, frozen at its random features."""

    def supernet_options(self):
        return {**super().supernet_options(), "affine": True}

    def prepare_model(self, model, state=None):
        super().prepare_model(model, state)
        self.features = freeze_random_features(model, self.features_seed,
                                               self.config.rf_train_classifier)

    @property
    def features_seed(self) -> int:
        c = self.config
        return c.seed if c.rf_seed is None else c.rf_seed

    def describe(self):
        f = self.features
        return (f"random features seed {self.features_seed}: {f['frozen_convolutions']} "
                f"frozen convolutions ({f['frozen_weights']:,} weights), "
                f"{f['trained_weights']:,} BatchNorm"
                f"{' and classifier' if self.config.rf_train_classifier else ''} weights trained")


class RFDARTS(_RandomFeatures, DARTS):
    name = "rf-darts"
    summary = ("DARTS with every convolution frozen at its random (Kaiming) initialisation; "
               "only BatchNorm (and the classifier) trained")


class RFPCDARTS(_RandomFeatures, PCDARTS):
    name = "rf-pcdarts"
    summary = ("PC-DARTS with every convolution frozen at its random (Kaiming) "
               "initialisation; only BatchNorm (and the classifier) trained")
