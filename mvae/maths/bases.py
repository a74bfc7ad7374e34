"""A basis rebuilt from the configuration a saved model records (``Basis.to_config``)."""

from __future__ import annotations

import numpy as np

from mvae.errors import InputError

from .compositions import Basis, HelmertBasis
from .trees import TreeBasis

__all__ = ["basis_from_config"]


def basis_from_config(config: dict) -> Basis:
    """Rebuild a basis from :meth:`Basis.to_config` output (e.g. read back from JSON).

    Parameters
    ----------
    config : dict
        With ``"kind"`` ``"helmert"`` or ``"tree"``.

    Returns
    -------
    Basis

    Examples
    --------
    >>> import json
    >>> from mvae.maths.trees import TreeBasis
    >>> basis = TreeBasis.balanced(5, feature_ids=list("abcde"))
    >>> again = basis_from_config(json.loads(json.dumps(basis.to_config())))
    >>> np.array_equal(again.dense(), basis.dense()), again.feature_ids == basis.feature_ids
    (True, True)
    """
    try:
        kind = config["kind"]
        if kind == "helmert":
            return HelmertBasis(config["n_features"], config.get("feature_ids"))
        if kind == "tree":
            basis = TreeBasis(
                config["tip_features"],
                config["start"],
                config["split"],
                config["stop"],
                config.get("balance_names"),
                config.get("feature_ids"),
            )
            if "n_features" in config and config["n_features"] != basis.n_features:
                raise InputError(
                    f"basis config says n_features = {config['n_features']} "
                    f"but its tree has {basis.n_features} tips"
                )
            return basis
    except (KeyError, TypeError) as err:
        raise InputError(f"basis config is incomplete or malformed: {err!r}") from err
    raise InputError(f"unknown basis kind {kind!r} in config; expected 'helmert' or 'tree'")
