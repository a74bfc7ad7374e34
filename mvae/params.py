"""Constructor parameters of the estimators, the scikit-learn way: ``__init__`` only stores its
arguments, ``get_params`` returns them by name, and ``fit`` checks them with errors that name the
parameter, the value given and what is allowed. Shared by :class:`mvae.model.MultinomialVAE` and
the image estimators of :mod:`mvae.images.model`."""

from __future__ import annotations

import inspect
import numbers

from mvae.errors import InputError

__all__ = ["constructor_params", "is_int", "require"]


def constructor_params(estimator) -> dict:
    """The arguments of ``type(estimator).__init__``, by name, as the estimator stores them.

    >>> class Example:
    ...     def __init__(self, a=1, *, b=2):
    ...         self.a, self.b = a, b
    >>> constructor_params(Example(b=3))
    {'a': 1, 'b': 3}
    """
    names = [p for p in inspect.signature(type(estimator).__init__).parameters if p != "self"]
    return {name: getattr(estimator, name) for name in names}


def is_int(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require(condition: bool, name: str, value, allowed: str) -> None:
    """Raise ``InputError("name=value is not allowed: allowed")`` unless ``condition``.

    >>> require(True, "n_latent", 3, "need an integer >= 1")
    >>> require(False, "n_latent", 0, "need an integer >= 1")
    Traceback (most recent call last):
    ...
    mvae.errors.InputError: n_latent=0 is not allowed: need an integer >= 1
    """
    if not condition:
        raise InputError(f"{name}={value!r} is not allowed: {allowed}")
