"""How a hyperparameter tuning job chooses its trials: SageMaker's search strategies and its early-stopping rule.

A CreateHyperParameterTuningJob request names a strategy and the ranges to search:

    ParameterRanges.ContinuousParameterRanges   Name, MinValue, MaxValue, ScalingType
    ParameterRanges.IntegerParameterRanges      Name, MinValue, MaxValue, ScalingType
    ParameterRanges.CategoricalParameterRanges  Name, Values

(all values are strings, as hyperparameters are). The strategies, as SageMaker documents them:

- `Random`: each trial's values are drawn independently within the ranges, so that any number of trials can
  run at once without hurting the search; `RandomSeed` makes the draws repeatable.
- `Grid`: every combination of the categorical values, each exactly once; only categorical ranges are
  allowed, and the number of trials is the number of combinations (MaxNumberOfTrainingJobs, when given,
  must equal it).
- `Bayesian`: SageMaker fits its own model (a Gaussian process) to the finished trials and chooses the next
  values where it expects improvement. That model is not public; offline, optuna's TPE sampler stands in
  for it: also a model of the finished trials that trades exploring against exploiting, seeded by
  `RandomSeed`. Trials that are still running count as "pending" (optuna's constant liar), so trials
  chosen in parallel do not all land on the same point. The first wave of parallel trials is drawn at
  random, as nothing is known yet when they start. The values it picks differ from SageMaker's.
- `Hyperband` is not offered offline.

ScalingType: `Linear` draws uniformly, `Logarithmic` uniformly in log space (ranges above 0),
`ReverseLogarithmic` (continuous ranges within [0, 1)) so that 1 - value is log-uniform, densest near 1.
For `Auto` SageMaker "chooses the best scale"; here that is the rule of thumb its documentation gives for
choosing by hand: logarithmic when the range is above 0 and spans at least an order of magnitude
(MaxValue >= 10 x MinValue), linear otherwise.

Early stopping (`TrainingJobEarlyStoppingType=Auto`) follows SageMaker's median rule: after each epoch a
trial's objective is compared with the median, over the trials that have completed, of their running
averages of the objective up to the same epoch; a trial worse than that median is stopped.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

# optuna announces each study at INFO; the tuning job's own log says what matters.
optuna.logging.set_verbosity(optuna.logging.WARNING)

STRATEGIES = ("Random", "Grid", "Bayesian")
SCALING_TYPES = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
OBJECTIVE_TYPES = ("Maximize", "Minimize")
AUTO_LOG_SPAN = 10.0  # Auto scaling turns logarithmic for positive ranges spanning at least this factor


class TuningConfigError(ValueError):
    """A tuning request that SageMaker would refuse; the message names the field and what to change."""


@dataclasses.dataclass(frozen=True)
class NumericRange:
    """A continuous or integer range, with its scale resolved (never `Auto`)."""

    name: str
    kind: str  # "Continuous" or "Integer"
    min_value: float
    max_value: float
    scaling: str  # "Linear", "Logarithmic" or "ReverseLogarithmic"

    def distribution(self) -> BaseDistribution:
        """The optuna distribution that draws this range's values (1 - value for ReverseLogarithmic)."""
        if self.kind == "Integer":
            return IntDistribution(int(self.min_value), int(self.max_value), log=self.scaling == "Logarithmic")
        if self.scaling == "ReverseLogarithmic":
            return FloatDistribution(1 - self.max_value, 1 - self.min_value, log=True)
        return FloatDistribution(self.min_value, self.max_value, log=self.scaling == "Logarithmic")

    def value(self, drawn: float) -> str:
        """The hyperparameter string for a value drawn from distribution(), kept inside the range."""
        if self.kind == "Integer":
            return str(int(drawn))
        value = 1 - drawn if self.scaling == "ReverseLogarithmic" else drawn
        return repr(min(max(float(value), self.min_value), self.max_value))


@dataclasses.dataclass(frozen=True)
class CategoricalRange:
    """A list of values, each passed to the trial as it is written."""

    name: str
    values: tuple[str, ...]

    def distribution(self) -> BaseDistribution:
        """The optuna distribution that picks one of the values."""
        return CategoricalDistribution(self.values)

    def value(self, drawn: str) -> str:
        """The hyperparameter string: the value itself."""
        return drawn


Range = NumericRange | CategoricalRange


def _number(text: Any, field: str, kind: str) -> float:
    """A range bound as a number; a bound that is not one names the field."""
    try:
        number = int(text) if kind == "Integer" else float(text)
    except (TypeError, ValueError):
        raise TuningConfigError(f"{field}={text!r} is not {'an integer' if kind == 'Integer' else 'a number'}") from None
    if not math.isfinite(number):
        raise TuningConfigError(f"{field}={text!r} is not a finite number")
    return number


def resolve_scaling(kind: str, name: str, min_value: float, max_value: float, scaling: str) -> str:
    """The scale a numeric range is searched on, refusing scales that do not fit the range as SageMaker does."""
    if scaling not in SCALING_TYPES:
        raise TuningConfigError(f"range {name!r}: ScalingType {scaling!r} is not one of {', '.join(SCALING_TYPES)}")
    if scaling == "Auto":
        return "Logarithmic" if min_value > 0 and max_value >= AUTO_LOG_SPAN * min_value else "Linear"
    if scaling == "Logarithmic" and min_value <= 0:
        raise TuningConfigError(f"range {name!r}: Logarithmic scaling needs MinValue > 0, not {min_value}")
    if scaling == "ReverseLogarithmic":
        if kind == "Integer":
            raise TuningConfigError(f"range {name!r}: ReverseLogarithmic scaling is for continuous ranges only")
        if not 0 <= min_value < max_value < 1:
            raise TuningConfigError(
                f"range {name!r}: ReverseLogarithmic scaling needs 0 <= MinValue < MaxValue < 1, "
                f"not [{min_value}, {max_value}]"
            )
    return scaling


def parse_ranges(parameter_ranges: Mapping[str, Any] | None) -> list[Range]:
    """The ranges of a request's ParameterRanges, checked (bounds, scales, names used once)."""
    ranges: list[Range] = []
    for kind in ("Continuous", "Integer"):
        for entry in (parameter_ranges or {}).get(f"{kind}ParameterRanges") or []:
            name = entry["Name"]
            low = _number(entry.get("MinValue"), f"{kind}ParameterRanges[{name}].MinValue", kind)
            high = _number(entry.get("MaxValue"), f"{kind}ParameterRanges[{name}].MaxValue", kind)
            if low >= high:
                raise TuningConfigError(f"range {name!r}: MinValue {low} must be below MaxValue {high}")
            scaling = resolve_scaling(kind, name, low, high, entry.get("ScalingType") or "Auto")
            ranges.append(NumericRange(name, kind, low, high, scaling))
    for entry in (parameter_ranges or {}).get("CategoricalParameterRanges") or []:
        values = tuple(str(value) for value in entry.get("Values") or [])
        if not values or len(set(values)) != len(values):
            raise TuningConfigError(f"range {entry['Name']!r}: Values must list at least one value, each once")
        ranges.append(CategoricalRange(entry["Name"], values))
    names = [item.name for item in ranges]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise TuningConfigError(f"hyperparameters {', '.join(repeated)} have more than one range")
    if not ranges:
        raise TuningConfigError("ParameterRanges holds no range: name at least one hyperparameter to tune")
    return ranges


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One trial's tuned hyperparameters, numbered from 0 in the order the strategy chose them."""

    number: int
    hyperparameters: dict[str, str]


class SearchStrategy(abc.ABC):
    """Chooses the trials of one tuning job: `suggest` the next one, `report` how each ended."""

    max_jobs: int

    @abc.abstractmethod
    def suggest(self) -> Suggestion | None:
        """The next trial's hyperparameters, or None when the strategy has no trial left to run."""

    @abc.abstractmethod
    def report(self, number: int, objective: float | None) -> None:
        """A trial's final objective, or None when it failed or reported no objective."""


class GridSearch(SearchStrategy):
    """Every combination of the categorical values, in the order the ranges and their values are listed."""

    def __init__(self, ranges: Sequence[Range], max_jobs: int | None) -> None:
        numeric = [item.name for item in ranges if not isinstance(item, CategoricalRange)]
        if numeric:
            raise TuningConfigError(
                f"the Grid strategy takes categorical ranges only; {', '.join(numeric)} "
                "are continuous or integer: list their values as a CategoricalParameterRange"
            )
        self.combinations = grid(ranges)
        if max_jobs is not None and max_jobs != len(self.combinations):
            raise TuningConfigError(
                f"MaxNumberOfTrainingJobs={max_jobs}, but the grid has {len(self.combinations)} combinations: "
                "leave it out or make it equal"
            )
        self.max_jobs = len(self.combinations)
        self.next_index = 0

    def suggest(self) -> Suggestion | None:
        if self.next_index >= len(self.combinations):
            return None
        suggestion = Suggestion(self.next_index, dict(self.combinations[self.next_index]))
        self.next_index += 1
        return suggestion

    def report(self, number: int, objective: float | None) -> None:
        """The grid does not depend on results."""


def grid(ranges: Sequence[CategoricalRange]) -> list[dict[str, str]]:
    """All combinations of the ranges' values: the first range varies slowest."""
    names = [item.name for item in ranges]
    return [dict(zip(names, values)) for values in itertools.product(*(item.values for item in ranges))]


class SampledSearch(SearchStrategy):
    """Random or Bayesian search through an optuna study (ask for a trial, tell its result)."""

    def __init__(self, ranges: Sequence[Range], max_jobs: int, sampler: optuna.samplers.BaseSampler, maximize: bool) -> None:
        self.ranges = list(ranges)
        self.max_jobs = max_jobs
        self.study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=sampler)
        self.distributions = {item.name: item.distribution() for item in self.ranges}
        self.trials: dict[int, optuna.Trial] = {}

    def suggest(self) -> Suggestion | None:
        if len(self.trials) >= self.max_jobs:
            return None
        trial = self.study.ask(self.distributions)
        self.trials[trial.number] = trial
        hyperparameters = {item.name: item.value(trial.params[item.name]) for item in self.ranges}
        return Suggestion(trial.number, hyperparameters)

    def report(self, number: int, objective: float | None) -> None:
        trial = self.trials[number]
        if objective is None or not math.isfinite(objective):
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, objective)


def make_strategy(
    strategy: str,
    ranges: Sequence[Range],
    *,
    max_jobs: int | None,
    max_parallel: int,
    objective_type: str,
    seed: int | None,
) -> SearchStrategy:
    """The search strategy a tuning job's config names, ready to suggest its first trial."""
    if objective_type not in OBJECTIVE_TYPES:
        raise TuningConfigError(f"HyperParameterTuningJobObjective.Type {objective_type!r} is not Maximize or Minimize")
    if strategy == "Grid":
        return GridSearch(ranges, max_jobs)
    if strategy not in STRATEGIES:
        raise TuningConfigError(
            f"Strategy {strategy!r}: the local SageMaker offers {', '.join(STRATEGIES)} (not Hyperband)"
        )
    if max_jobs is None or max_jobs < 1:
        raise TuningConfigError(f"MaxNumberOfTrainingJobs={max_jobs!r}: the {strategy} strategy needs a number >= 1")
    if strategy == "Random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        # The first wave of parallel trials starts before any result exists: those are drawn at random.
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, max_parallel))
    return SampledSearch(ranges, max_jobs, sampler, maximize=objective_type == "Maximize")


def running_average(values: Sequence[float], epoch: int) -> float:
    """The mean of a trial's objective over its first `epoch` epochs."""
    return statistics.fmean(values[:epoch])


def median_rule_stops(current: Sequence[float], completed: Sequence[Sequence[float]], maximize: bool) -> bool:
    """Whether SageMaker's median rule stops a trial after its latest epoch.

    current: the trial's objective after each epoch so far; completed: the same for each completed trial.
    The trial stops when its latest value is worse than the median of the completed trials' running
    averages up to that epoch; completed trials with fewer epochs are not comparable and do not count.
    """
    epoch = len(current)
    if epoch == 0:  # no epoch finished yet: nothing to compare
        return False
    averages = [running_average(values, epoch) for values in completed if len(values) >= epoch]
    if not averages:
        return False
    median = statistics.median(averages)
    return current[-1] < median if maximize else current[-1] > median
