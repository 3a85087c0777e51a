"""Optuna samplers by name: the registry a spec's ``sampler`` chooses from, and a recipe.

A :class:`SamplerRecipe` is what the study keeps instead of a sampler object: the sampler's
name and options, plain data that pickles under every Optuna version. Ray Tune pickles the
searcher when the Tuner starts, in every experiment snapshot and on ``Tuner.restore``; since
Optuna 5.1 ``NSGAIISampler`` holds a ``threading.Lock``, so a searcher that carried its
sampler could not be pickled at all. The searcher (:mod:`study.search`) drops the sampler
when pickled and rebuilds it from the recipe; the history a sampler learns from lives in the
Optuna study's storage, which pickles with the searcher.

Builders import Optuna lazily, so ``study.spec`` can name the choices without importing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = ["DEFAULT_SAMPLER", "SAMPLERS", "SamplerRecipe"]

#: Seeds are reduced modulo this (NumPy's legacy RandomState takes seeds below 2**32).
_SEED_MODULUS: Final = 2**32


def _gp(seed: int | None, population_size: int) -> BaseSampler:
    import optuna

    # Log expected hypervolume improvement over a GP of each objective. Parameters absent from
    # some trials (beta without a matching loss) are drawn independently: expected, so quiet.
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


def _nsga2(seed: int | None, population_size: int) -> BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)


def _tpe(seed: int | None, population_size: int) -> BaseSampler:
    import optuna

    # multivariate: the searched parameters interact (beta only matters with a matching loss).
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def _random(seed: int | None, population_size: int) -> BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


# The default first: GP, the measured winner of the tabulated search benchmark
# (docs/benchmarks.md, "Search efficiency"; docs/method.md, "Sampler and scheduler").
_BUILDERS: Final[dict[str, Callable[[int | None, int], BaseSampler]]] = {
    "gp": _gp,
    "nsga2": _nsga2,
    "tpe": _tpe,
    "random": _random,
}

#: Sampler names a spec may give, the default first.
SAMPLERS: Final[tuple[str, ...]] = tuple(_BUILDERS)
#: The sampler of a spec that names none.
DEFAULT_SAMPLER: Final = SAMPLERS[0]


@dataclass(frozen=True, kw_only=True)
class SamplerRecipe:
    """A sampler by name and options; :meth:`build` makes the Optuna object.

    Args:
        name: one of :data:`SAMPLERS`.
        seed: the sampler's seed; None draws one from the OS.
        population_size: NSGA-II's generation size (ignored by the others).
    """

    name: str
    seed: int | None = None
    population_size: int = 4

    def __post_init__(self) -> None:
        if self.name not in _BUILDERS:
            raise ValueError(f"sampler: must be one of {', '.join(SAMPLERS)}, got {self.name!r}")
        if self.population_size < 2:
            raise ValueError(
                f"population_size: must be an integer >= 2, got {self.population_size}"
            )

    def build(self, *, trials_so_far: int = 0) -> BaseSampler:
        """A new sampler. ``trials_so_far`` offsets the seed for a sampler rebuilt mid-study.

        Why the offset: a sampler rebuilt after N trials with the original seed would replay
        the random draws of trials 1..N, so its first suggestions would repeat the study's
        first ones. Offsetting by N keeps a rebuilt study deterministic without repeats.
        """
        seed = None if self.seed is None else (self.seed + trials_so_far) % _SEED_MODULUS
        return _BUILDERS[self.name](seed, self.population_size)
