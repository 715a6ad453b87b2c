"""Range-estimator schemes (``scheme=`` of QuantSim, ``--scheme`` of the CLI): names and the registry behind them.

A scheme is a name bound to a factory ``axis -> RangeEstimator``. The built-ins (``minmax``, ``tf_enhanced``,
``percentile``, ``mse``) register themselves in :mod:`leantorch.quant.estimators`; a new estimator is one class
in any module, decorated with :func:`register_estimator`, and is then accepted everywhere a scheme is (QuantSim,
configs, the CLI's choices).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from .estimator_base import RangeEstimator

__all__ = [
    "QuantScheme",
    "register_estimator",
    "unregister_estimator",
    "estimator_factory",
    "estimator_names",
    "after_calibration_hooks",
]

EstimatorFactory = Callable[..., "RangeEstimator"]  # called as factory(axis=...)
Factory = TypeVar("Factory", bound=EstimatorFactory)

_FACTORIES: dict[str, EstimatorFactory] = {}
#: AIMET's names for the built-ins.
_ALIASES = {"tf": "minmax", "post_training_tf": "minmax", "post_training_tf_enhanced": "tf_enhanced"}


class QuantScheme(str):
    """The name of a registered range estimator; a ``str`` (``QuantScheme.MINMAX == "minmax"``).

    Example:
        >>> QuantScheme.parse("tf"), QuantScheme.parse("TF_Enhanced") == QuantScheme.TF_ENHANCED
        (QuantScheme('minmax'), True)
    """

    MINMAX: ClassVar[QuantScheme]
    TF_ENHANCED: ClassVar[QuantScheme]
    PERCENTILE: ClassVar[QuantScheme]
    MSE: ClassVar[QuantScheme]

    @property
    def value(self) -> str:
        """The plain name (as an Enum's ``value``)."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"QuantScheme({self.value!r})"

    @classmethod
    def parse(cls, value: Any) -> QuantScheme:
        """A registered scheme's name, or an AIMET alias of one (``tf``), in any case.

        Raises:
            ConfigError: no estimator is registered under that name (the message lists the names).
        """
        text = str.__str__(value) if isinstance(value, str) else str(value)
        name = _ALIASES.get(text.lower(), text.lower())
        if name not in _FACTORIES:
            raise ConfigError(f"unknown quantization scheme {value!r}; choose one of: {', '.join(estimator_names())}")
        return cls(name)


QuantScheme.MINMAX = QuantScheme("minmax")
QuantScheme.TF_ENHANCED = QuantScheme("tf_enhanced")
QuantScheme.PERCENTILE = QuantScheme("percentile")
QuantScheme.MSE = QuantScheme("mse")


def register_estimator(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make a ``RangeEstimator`` class (or a factory taking ``axis=``) selectable as ``scheme=name``.

    Raises:
        ConfigError: the name (or an alias) is taken.

    Example:
        >>> from leantorch.quant.estimators import MinMaxEstimator
        >>> @register_estimator("doc_minmax")
        ... class DocMinMax(MinMaxEstimator):
        ...     pass
        >>> "doc_minmax" in estimator_names()
        True
        >>> unregister_estimator("doc_minmax")
    """
    key = name.lower()

    def add(factory: Factory) -> Factory:
        if key in _FACTORIES or key in _ALIASES:
            raise ConfigError(f"quantization scheme {name!r} is already registered; pick another name")
        _FACTORIES[key] = factory
        return factory

    return add


def unregister_estimator(name: str) -> None:
    """Remove a registered scheme (tests register toy estimators and take them away again)."""
    _FACTORIES.pop(name.lower())


def estimator_factory(scheme: str) -> EstimatorFactory:
    """The factory registered for ``scheme`` (a name or alias; see :meth:`QuantScheme.parse`)."""
    return _FACTORIES[QuantScheme.parse(scheme)]


def after_calibration_hooks(schemes: Iterable[str]) -> tuple[int, list[Callable[..., None]]]:
    """What the schemes in use ask of :meth:`QuantSim.compute_encodings` after the statistics are turned into
    encodings: the number of calibration batches to keep (the most any asks for) and the distinct
    ``after_calibration(sim, batches, progress)`` functions to call with them.

    Why: some schemes choose ranges by running the model again (``downstream``, in :mod:`leantorch.ptq`); an
    estimator class declares ``kept_batches`` and ``after_calibration``, so the simulation needs to know none.

    Example:
        >>> after_calibration_hooks(["minmax", "tf_enhanced"])
        (0, [])
    """
    keep, hooks = 0, []
    for scheme in dict.fromkeys(schemes):
        factory = estimator_factory(scheme)
        hook = getattr(factory, "after_calibration", None)
        if hook is not None and hook not in hooks:
            hooks.append(hook)
            keep = max(keep, int(getattr(factory, "kept_batches", 0)))
    return keep, hooks


def estimator_names() -> Sequence[str]:
    """Registered scheme names, in registration order (the built-ins first)."""
    return tuple(_FACTORIES)
