"""Scores from the source head's class probabilities: LEEP and NCE (NumPy)."""

from __future__ import annotations

import numpy as np

from whichmodel.actors.proxies.base import (
    ProxyInput,
    ProxyResult,
    _split,
)

# ---------------------------------------------------------------------------------------------
# LEEP and NCE (need a source head)


def _no_head(name: str) -> ProxyResult:
    return ProxyResult(
        None, reason=f"model has no source head ({name} needs source-class probabilities)"
    )


def _source_target_joint(weights: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical joint P(y, z) (C, K) from per-example source weights (probs or one-hot)."""
    joint = np.zeros((num_classes, weights.shape[1]))
    np.add.at(joint, y, weights)
    return joint / len(y)


def leep(inp: ProxyInput, *, split: str = "train") -> ProxyResult:
    """LEEP (Nguyen et al., ICML 2020): mean log Σ_z P̂(y_i|z) θ(x_i)_z on the training split.

    P̂(y|z) = P̂(y, z) / P̂(z) with P̂(y, z) = Σ_{i: y_i = y} θ(x_i)_z / n; a source class that no
    example reaches (P̂(z) = 0) contributes 0 (thuml/LogME ``LEEP.py`` and TLlib
    ``tllib/ranking/leep.py`` would give NaN there; google-research stable_transfer ``leep.py``
    uses divide_no_nan, as here).
    """
    if inp.train_probs is None:
        return _no_head("LEEP")
    theta, y = _split(inp, split, probs=True)
    joint = _source_target_joint(theta, y, inp.num_classes)
    pz = joint.sum(0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y|z), (C, K)
    eep = np.einsum("ik,ik->i", theta, cond[y])
    if np.any(eep <= 0):
        raise ValueError("leep: an example has zero expected empirical prediction")
    return ProxyResult(float(np.mean(np.log(eep))), runs=[{"source_classes": theta.shape[1]}])


def nce(inp: ProxyInput, *, split: str = "train") -> ProxyResult:
    """NCE (Tran et al., ICCV 2019): -H(Y|Z) with Z = argmax source prediction (first on ties).

    H(Y|Z) = -Σ P̂(y, z) log(P̂(y, z) / P̂(z)); empty cells and unreached source classes
    contribute 0, as TLlib ``tllib/ranking/nce.py`` (which masks P̂(z) = 0 and adds 1e-20 inside
    the log; thuml/LogME ``NCE.py`` would give NaN there).
    """
    if inp.train_probs is None:
        return _no_head("NCE")
    theta, y = _split(inp, split, probs=True)
    z = theta.argmax(1)
    onehot = np.zeros_like(theta)
    onehot[np.arange(len(z)), z] = 1.0
    joint = _source_target_joint(onehot, y, inp.num_classes)
    pz = np.broadcast_to(joint.sum(0, keepdims=True), joint.shape)
    nz = joint > 0
    cond_entropy = -float(np.sum(joint[nz] * np.log(joint[nz] / pz[nz])))
    return ProxyResult(-cond_entropy + 0.0, runs=[{"source_classes_hit": int(len(set(z)))}])
