"""The tuning strategies of the local SageMaker: Grid, Random, Bayesian (optuna's TPE), scales and the median rule."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from local_sagemaker import tuning_strategies as ts

LR = {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
SMOOTHING = {"Name": "label_smoothing", "MinValue": "0.0", "MaxValue": "0.3", "ScalingType": "Linear"}
WIDTH = {"Name": "width", "MinValue": "8", "MaxValue": "32", "ScalingType": "Linear"}
BATCH = {"Name": "batch_size", "Values": ["32", "64", "128"]}
RANGES = {
    "ContinuousParameterRanges": [LR, SMOOTHING],
    "IntegerParameterRanges": [WIDTH],
    "CategoricalParameterRanges": [BATCH],
}


def draw(strategy: str, parameter_ranges: dict, count: int, seed: int | None = 7, objective=None) -> list[dict[str, str]]:
    """The hyperparameters of `count` trials, each reported back with objective(hyperparameters) when given."""
    search = ts.make_strategy(
        strategy, ts.parse_ranges(parameter_ranges), max_jobs=count, max_parallel=2, objective_type="Maximize", seed=seed
    )
    drawn = []
    while (suggestion := search.suggest()) is not None:
        drawn.append(suggestion.hyperparameters)
        search.report(suggestion.number, objective(suggestion.hyperparameters) if objective else None)
    return drawn


def test_grid_enumerates_exactly_the_grid_once_each() -> None:
    ranges = {"CategoricalParameterRanges": [BATCH, {"Name": "width", "Values": ["8", "16"]}]}
    search = ts.make_strategy("Grid", ts.parse_ranges(ranges), max_jobs=None, max_parallel=2, objective_type="Maximize", seed=None)
    suggestions = []
    while (suggestion := search.suggest()) is not None:
        suggestions.append(suggestion)
    expected = [{"batch_size": b, "width": w} for b, w in itertools.product(["32", "64", "128"], ["8", "16"])]
    assert [s.hyperparameters for s in suggestions] == expected
    assert [s.number for s in suggestions] == list(range(6))
    assert search.max_jobs == 6
    assert search.suggest() is None


def test_grid_refuses_numeric_ranges_and_a_wrong_job_count() -> None:
    with pytest.raises(ts.TuningConfigError, match=r"categorical ranges only; lr"):
        ts.make_strategy("Grid", ts.parse_ranges(RANGES), max_jobs=None, max_parallel=1, objective_type="Maximize", seed=None)
    categorical = ts.parse_ranges({"CategoricalParameterRanges": [BATCH]})
    with pytest.raises(ts.TuningConfigError, match=r"MaxNumberOfTrainingJobs=4, but the grid has 3 combinations"):
        ts.make_strategy("Grid", categorical, max_jobs=4, max_parallel=1, objective_type="Maximize", seed=None)
    assert ts.make_strategy("Grid", categorical, max_jobs=3, max_parallel=1, objective_type="Maximize", seed=None).max_jobs == 3


def objective(hyperparameters: dict[str, str]) -> float:
    """A smooth objective with its best learning rate at 1e-2."""
    return -((math.log10(float(hyperparameters["lr"])) + 2) ** 2) - float(hyperparameters["label_smoothing"])


def test_bayesian_is_reproducible_with_a_seed() -> None:
    first = draw("Bayesian", RANGES, 8, seed=11, objective=objective)
    assert first == draw("Bayesian", RANGES, 8, seed=11, objective=objective)
    assert first != draw("Bayesian", RANGES, 8, seed=12, objective=objective)
    assert len(first) == 8 and len({tuple(sorted(h.items())) for h in first}) == 8


def test_bayesian_chooses_from_the_results_after_its_random_start() -> None:
    # Same seed, two different objectives: the first wave (max_parallel=2 trials) is drawn before any result
    # exists, so it is the same; TPE's later choices follow the results, so they differ.
    as_is = draw("Bayesian", RANGES, 6, seed=5, objective=objective)
    reversed_ = draw("Bayesian", RANGES, 6, seed=5, objective=lambda h: -objective(h))
    assert as_is[:2] == reversed_[:2]
    assert as_is[2:] != reversed_[2:]


def test_random_is_reproducible_with_a_seed_and_ignores_results() -> None:
    first = draw("Random", RANGES, 10, seed=3, objective=objective)
    assert first == draw("Random", RANGES, 10, seed=3, objective=lambda h: -objective(h))
    assert first != draw("Random", RANGES, 10, seed=4)


def test_log_scaled_samples_are_spread_geometrically() -> None:
    values = [float(h["lr"]) for h in draw("Random", {"ContinuousParameterRanges": [LR]}, 600, seed=1)]
    per_decade = [sum(low <= v < low * 10 for v in values) / len(values) for low in (1e-4, 1e-3, 1e-2)]
    # Log-uniform over three decades puts a third in each; uniform would put 90 % in the last one.
    assert all(0.25 < share < 0.42 for share in per_decade), per_decade
    assert 10**-2.5 / 1.5 < statistics.median(values) < 10**-2.5 * 1.5
    linear = {**LR, "ScalingType": "Linear"}
    linear_values = [float(h["lr"]) for h in draw("Random", {"ContinuousParameterRanges": [linear]}, 600, seed=1)]
    assert sum(v >= 1e-2 for v in linear_values) / len(linear_values) > 0.85


def test_sampled_values_stay_inside_their_ranges() -> None:
    ranges = {
        "ContinuousParameterRanges": [
            LR,
            SMOOTHING,
            {"Name": "momentum", "MinValue": "0.9", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"},
        ],
        "IntegerParameterRanges": [WIDTH, {"Name": "hidden", "MinValue": "16", "MaxValue": "512", "ScalingType": "Logarithmic"}],
        "CategoricalParameterRanges": [BATCH],
    }
    for strategy in ("Random", "Bayesian"):
        drawn = draw(strategy, ranges, 150, seed=2, objective=objective)
        assert len(drawn) == 150
        for hyperparameters in drawn:
            assert 1e-4 <= float(hyperparameters["lr"]) <= 0.1
            assert 0.0 <= float(hyperparameters["label_smoothing"]) <= 0.3
            assert 0.9 <= float(hyperparameters["momentum"]) <= 0.999
            assert hyperparameters["width"].isdigit() and 8 <= int(hyperparameters["width"]) <= 32
            assert hyperparameters["hidden"].isdigit() and 16 <= int(hyperparameters["hidden"]) <= 512
            assert hyperparameters["batch_size"] in BATCH["Values"]
        widths = {int(h["width"]) for h in drawn}
        assert min(widths) <= 10 and max(widths) >= 30, f"{strategy} covers the integer range: {sorted(widths)}"


def test_reverse_logarithmic_is_densest_near_one() -> None:
    momentum = {"Name": "momentum", "MinValue": "0.0", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"}
    values = [float(h["momentum"]) for h in draw("Random", {"ContinuousParameterRanges": [momentum]}, 300, seed=9)]
    # 1 - value is log-uniform over [0.001, 1]: a third of the values lie above 0.99.
    assert 0.25 < sum(v > 0.99 for v in values) / len(values) < 0.42


def test_auto_scaling_is_logarithmic_for_ranges_spanning_a_decade() -> None:
    auto = ts.parse_ranges({
        "ContinuousParameterRanges": [{**LR, "ScalingType": "Auto"}, {**SMOOTHING, "ScalingType": "Auto"}],
        "IntegerParameterRanges": [{**WIDTH, "ScalingType": "Auto"}, {"Name": "hidden", "MinValue": "16", "MaxValue": "512"}],
    })
    assert {item.name: item.scaling for item in auto} == {
        "lr": "Logarithmic",
        "label_smoothing": "Linear",
        "width": "Linear",
        "hidden": "Logarithmic",
    }


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ({"ContinuousParameterRanges": [{**SMOOTHING, "ScalingType": "Logarithmic"}]}, r"'label_smoothing': Logarithmic scaling needs MinValue > 0"),
        ({"IntegerParameterRanges": [{**WIDTH, "ScalingType": "ReverseLogarithmic"}]}, r"'width': ReverseLogarithmic scaling is for continuous"),
        ({"ContinuousParameterRanges": [{**LR, "MinValue": "0.5"}]}, r"'lr': MinValue 0.5 must be below MaxValue 0.1"),
        ({"IntegerParameterRanges": [{**WIDTH, "MaxValue": "3.5"}]}, r"IntegerParameterRanges\[width\].MaxValue='3.5' is not an integer"),
        ({"ContinuousParameterRanges": [{**LR, "ScalingType": "Cubic"}]}, r"ScalingType 'Cubic' is not one of"),
        ({"ContinuousParameterRanges": [LR], "CategoricalParameterRanges": [{"Name": "lr", "Values": ["1"]}]}, r"lr have more than one range"),
        ({"CategoricalParameterRanges": [{"Name": "batch_size", "Values": []}]}, r"'batch_size': Values must list"),
        ({}, r"ParameterRanges holds no range"),
    ],
)
def test_ranges_sagemaker_refuses_are_refused_naming_the_range(ranges: dict, message: str) -> None:
    with pytest.raises(ts.TuningConfigError, match=message):
        ts.parse_ranges(ranges)


def test_strategies_and_objectives_offline_refuses_are_named() -> None:
    ranges = ts.parse_ranges(RANGES)
    with pytest.raises(ts.TuningConfigError, match=r"'Hyperband'.*offers Random, Grid, Bayesian"):
        ts.make_strategy("Hyperband", ranges, max_jobs=4, max_parallel=2, objective_type="Maximize", seed=None)
    with pytest.raises(ts.TuningConfigError, match=r"Type 'Largest' is not Maximize or Minimize"):
        ts.make_strategy("Random", ranges, max_jobs=4, max_parallel=2, objective_type="Largest", seed=None)
    with pytest.raises(ts.TuningConfigError, match=r"MaxNumberOfTrainingJobs=None: the Random strategy needs"):
        ts.make_strategy("Random", ranges, max_jobs=None, max_parallel=2, objective_type="Maximize", seed=None)


def test_failed_trials_do_not_stop_the_search() -> None:
    search = ts.make_strategy("Bayesian", ts.parse_ranges(RANGES), max_jobs=5, max_parallel=1, objective_type="Minimize", seed=0)
    numbers = []
    while (suggestion := search.suggest()) is not None:
        numbers.append(suggestion.number)
        search.report(suggestion.number, None if suggestion.number % 2 else objective(suggestion.hyperparameters))
    assert numbers == [0, 1, 2, 3, 4]


CURVES = [[0.5, 0.7, 0.9], [0.6, 0.8, 0.85], [0.2, 0.3, 0.4]]  # running averages at epoch 2: 0.6, 0.7, 0.25


@pytest.mark.parametrize(
    ("current", "completed", "maximize", "stops"),
    [
        ([0.4, 0.59], CURVES, True, True),  # below the median 0.6
        ([0.4, 0.61], CURVES, True, False),
        ([0.4, 0.59], CURVES, False, False),  # minimising, 0.59 is better than 0.6
        ([0.4, 0.61], CURVES, False, True),
        ([0.1], [], True, False),  # nothing completed yet: nothing to compare with
        ([], CURVES, True, False),  # the trial has not finished an epoch yet
        ([0.1, 0.1, 0.1, 0.1], CURVES, True, False),  # no completed trial reached epoch 4
        ([0.1, 0.2, 0.72], [*CURVES, [0.9]], True, False),  # median 0.7; counting the one-epoch trial would make it 0.725
    ],
)
def test_median_rule(current: list[float], completed: list[list[float]], maximize: bool, stops: bool) -> None:
    assert ts.median_rule_stops(current, completed, maximize) is stops
