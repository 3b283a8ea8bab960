"""A harness of bad inputs: each must fail with one clean line before anything trains.

Every case is a defect applied to a small, valid suite (written as a TOML file and run through
the real command line, in-process) or to a Python ``Experiment``/``Suite``. Training is made
impossible (building a model or fitting records the call and raises), so a case that slips
through validation is caught as "trained first" rather than by a slow run. Positive controls
show the same inputs without the defect pass, and that the harness does notice training.

Running this file as a script prints the issue's figures: cases tried, clean one-line errors
before training, tracebacks, accepted.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mechscope
from mechscope.cli import main
from mechscope.experiment import Experiment
from mechscope.suite import Suite

#: A valid suite: two variants of a tiny network, one seed, one cheap probe.
BASE: dict[str, Any] = {
    "name": "harness",
    "seeds": 1,
    "base": {
        "task": {"name": "delayed_reach"},
        "model": {"name": "ctrnn", "n_units": 8},
        "trainer": {"name": "bptt", "steps": 2, "batch_size": 4},
        "probes": ["jpca"],
    },
    "vary": {"model.activation": ["tanh", "relu"]},
}

#: A valid experiment (Python form).
EXPERIMENT: dict[str, Any] = {
    "task": "delayed_reach",
    "model": {"name": "ctrnn", "n_units": 8},
    "trainer": {"name": "bptt", "steps": 2, "batch_size": 4},
    "probes": ["jpca"],
    "seed": 0,
}

_DELETE = object()


def toml_value(value: Any) -> str:
    """`value` as a TOML value (inline tables; inf and nan as TOML spells them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float | str):
        return json.dumps(value)  # JSON strings and numbers are TOML ones
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in data.items())


def with_change(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with the dotted `path` set to `value` (or removed)."""
    changed = copy.deepcopy(data)
    *parents, last = path.split("/")
    target = changed
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return changed


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input and a fragment its error message must hold."""

    id: str
    fragment: str
    suite: dict[str, Any] | None = None  # run through the CLI as a TOML file
    python: Callable[[], Any] | None = None  # raise from Python construction
    argv: tuple[str, ...] = ()  # extra CLI arguments; "{tmp}" is the test's folder


def suite_case(id: str, path: str, value: Any, fragment: str) -> Case:
    return Case(id, fragment, suite=with_change(BASE, path, value))


def experiment_case(id: str, fragment: str, **changes: Any) -> Case:
    return Case(id, fragment, python=lambda: Experiment(**{**EXPERIMENT, **changes}))


def suite_python_case(id: str, fragment: str, **changes: Any) -> Case:
    arguments = {"base": BASE["base"], "vary": BASE["vary"], "seeds": 1, **changes}
    return Case(id, fragment, python=lambda: Suite(**arguments))


CASES = [
    # Non-finite numbers, wherever a float field is.
    suite_case("lr-inf", "base/trainer/learning_rate", math.inf, "'learning_rate' = inf"),
    suite_case("lr-nan", "base/trainer/learning_rate", math.nan, "'learning_rate' = nan"),
    suite_case("rate-reg-inf", "base/trainer/rate_reg", math.inf, "'rate_reg' = inf"),
    suite_case("input-noise-inf", "base/trainer/input_noise", math.inf, "'input_noise' = inf"),
    suite_case("dt-inf", "base/task/dt", math.inf, "'dt' = inf"),
    suite_case("tau-minus-inf", "base/model/tau", -math.inf, "'tau' = -inf"),
    suite_case("gain-nan", "base/model/gain", math.nan, "'gain' = nan"),
    suite_case("delay-range-inf", "base/task/delay_range", [0.1, math.inf], "'delay_range.1'"),
    suite_case(
        "probe-field-inf",
        "base/probes",
        [{"name": "fixed_points", "start_noise": math.inf}],
        "'start_noise' = inf",
    ),
    suite_case("vary-value-inf", "vary", {"model.gain": [1.0, math.inf]}, "'gain' = inf"),
    # Strings (and other types) where a number, boolean or string belongs.
    suite_case("lr-string", "base/trainer/learning_rate", "0.01", "'learning_rate' = '0.01'"),
    suite_case("n-units-string", "base/model/n_units", "8", "'n_units' = '8'"),
    suite_case("steps-string", "base/trainer/steps", "2", "'steps' = '2'"),
    suite_case("bool-string", "base/model/learn_x0", "true", "'learn_x0' = 'true'"),
    suite_case("bool-int", "base/model/learn_x0", 1, "'learn_x0' = 1"),
    suite_case("int-float", "base/model/n_units", 8.5, "'n_units' = 8.5"),
    suite_case("string-number", "base/model/solver", 3, "'solver' = 3"),
    # Bare strings or tables where a list belongs.
    suite_case("probes-string", "base/probes", "jpca", "expected a list of values"),
    suite_case("probes-table", "base/probes", {"name": "jpca"}, "base.probes"),
    suite_case(
        "tuple-string", "base/probes", [{"name": "jpca", "window": "0.1"}], "'window' = '0.1'"
    ),
    # [vary]: a list of distinct values per path.
    suite_case("vary-string", "vary", {"model.activation": "relu"}, '["relu", "tanh"]'),
    suite_case("vary-scalar", "vary", {"model.gain": 0.5}, "vary 'model.gain' = 0.5"),
    suite_case("vary-duplicates", "vary", {"model.activation": ["tanh", "tanh"]}, "more than once"),
    suite_case("vary-empty", "vary", {"model.activation": []}, "has no values"),
    suite_case("vary-unknown-path", "vary", {"model.activatoin": ["tanh"]}, "did you mean"),
    suite_case("vary-bad-value", "vary", {"model.activation": ["tanh", "relux"]}, "relux"),
    # Seeds.
    suite_case("seeds-float", "seeds", 2.5, "seeds = 2.5"),
    suite_case("seeds-zero", "seeds", 0, "at least 1"),
    suite_case("seeds-string", "seeds", "3", "seeds = '3'"),
    suite_case("seeds-bool", "seeds", True, "seeds = True"),
    suite_case("seeds-repeat", "seeds", [1, 1], "seeds repeat"),
    suite_case("seeds-negative", "seeds", [0, -1], "seeds[1]"),
    suite_case("seeds-empty", "seeds", [], "non-empty list"),
    suite_case("seeds-float-list", "seeds", [0, 1.5], "seeds[1] must be an integer"),
    # Suite names become file names only once they are safe.
    suite_case("name-traversal", "name", "../../x", "not a safe file name"),
    suite_case("name-separator", "name", "a/b", "not a safe file name"),
    suite_case("name-nul", "name", "a\x00b", "not a safe file name"),
    suite_case("name-hidden", "name", ".hidden", "not a safe file name"),
    suite_case("name-empty", "name", "", "not a safe file name"),
    suite_case("name-number", "name", 3, "not a safe file name"),
    # Top-level entries of the wrong form.
    suite_case("description-number", "description", 3, "'description' = 3 has the wrong form"),
    suite_case("statistics-string", "statistics", "x", "'statistics' = 'x' has the wrong form"),
    suite_case("claims-string", "claims", "x", "'claims' = 'x' has the wrong form"),
    suite_case("claims-of-strings", "claims", ["x"], "claims[0] = 'x': expected a table"),
    suite_case("comparisons-string", "comparisons", "dsa", "'comparisons' = 'dsa'"),
    suite_case("vary-string-table", "vary", "relu", "'vary' = 'relu' has the wrong form"),
    suite_case("base-string", "base", "delayed_reach", "'base' = 'delayed_reach'"),
    # Sizes that cannot fit in memory.
    suite_case("n-units-huge", "base/model/n_units", 10**9, "of memory"),
    suite_case("batch-huge", "base/trainer/batch_size", 10**12, "of memory"),
    # Names and fields that do not exist.
    suite_case("unknown-model", "base/model/name", "ctrnnn", "did you mean 'ctrnn'"),
    suite_case("unknown-field", "base/trainer/learnig_rate", 0.1, "did you mean 'learning_rate'"),
    suite_case("unknown-suite-key", "seed", 1, "unknown key 'seed'"),
    suite_case("missing-base", "base", _DELETE, "missing [base]"),
    # The store path.
    Case("out-is-file", "is a file, not a directory", suite=BASE, argv=("--out", "{tmp}/file")),
    Case("out-inside-file", "is inside", suite=BASE, argv=("--out", "{tmp}/file/runs")),
    # Python construction follows the same rules.
    experiment_case("py-seed-float", "seed must be an integer", seed=2.5),
    experiment_case("py-seed-negative", "between 0 and 2**32 - 1", seed=-1),
    experiment_case("py-seed-too-large", "between 0 and 2**32 - 1", seed=2**32),
    experiment_case("py-probes-string", "expected a list of values", probes="jpca"),
    experiment_case(
        "py-nan", "'tau' = nan", model={"name": "ctrnn", "n_units": 8, "tau": float("nan")}
    ),
    experiment_case(
        "py-object", "expected a number, string", trainer={"name": "bptt", "steps": object()}
    ),
    experiment_case("py-string-number", "'n_units' = '8'", model={"name": "ctrnn", "n_units": "8"}),
    experiment_case("py-huge", "of memory", model={"name": "ctrnn", "n_units": 10**9}),
    suite_python_case(
        "py-vary-string", "expected a list of values", vary={"model.activation": "relu"}
    ),
    suite_python_case("py-suite-name", "not a safe file name", name="../x"),
    suite_python_case("py-seeds-float", "seeds = 2.5", seeds=2.5),
]


class Trained(Exception):
    """Raised by the patched model builder and trainer: validation let a bad input through."""


@pytest.fixture
def no_training(monkeypatch):
    """Make building a model or training impossible; returns the list of attempts."""
    import mechscope_bptt._trainer as bptt

    attempts: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise Trained(name)

        return refused

    monkeypatch.setattr(Experiment, "build_model", refuse("build_model"))
    monkeypatch.setattr(bptt.BPTTTrainer, "fit", refuse("fit"))
    monkeypatch.setattr(bptt.BPTTTrainer, "fit_many", refuse("fit_many"))
    return attempts


def outcome(case: Case, tmp: Path, attempts: list[str]) -> tuple[str, str]:
    """Run one case: ("clean" | "trained" | "traceback" | "accepted", the message)."""
    (tmp / "file").write_text("not a directory\n")
    if case.python is not None:
        try:
            case.python()
        except mechscope.MechscopeError as error:
            return ("trained" if attempts else "clean"), str(error)
        except Exception as error:  # noqa: BLE001 - the harness classifies every failure
            return "traceback", f"{type(error).__name__}: {error}"
        return "accepted", ""
    assert case.suite is not None
    path = tmp / "suite.toml"
    path.write_text(to_toml(case.suite))
    argv = ["run", str(path), "--quiet", "--out", str(tmp / "runs")]
    argv += [arg.replace("{tmp}", str(tmp)) for arg in case.argv]
    captured = _Capture()
    try:
        with captured:
            code = main(argv)
    except Exception as error:  # noqa: BLE001 - the harness classifies every failure
        return "traceback", f"{type(error).__name__}: {error}"
    lines = captured.err.strip().splitlines()
    message = lines[-1] if lines else ""
    if attempts:
        return "trained", message
    if code == 0:
        return "accepted", message
    if code != 2 or len(lines) != 1 or "unexpected" in message:
        return "traceback", captured.err.strip()
    return "clean", message


class _Capture:
    """Capture stderr (the CLI's error line) without pytest's fixtures, for script use too."""

    def __enter__(self) -> _Capture:
        import io

        self._stderr, self._buffer = sys.stderr, io.StringIO()
        sys.stderr = self._buffer
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr = self._stderr
        self.err = self._buffer.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly_before_training(case, tmp_path, no_training):
    kind, message = outcome(case, tmp_path, no_training)
    assert kind == "clean", f"{kind}: {message}"
    assert no_training == [], "nothing may be built or trained for an invalid input"
    assert "\n" not in message
    assert case.fragment in message, message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_harness_is_broad():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("base/trainer/learning_rate", 0.01),
        ("base/trainer/learning_rate", 1),  # an integer where a float belongs is fine
        ("base/model/gain", 4),
        ("base/task/delay_range", [0.3, 0.6]),
        ("vary", {"model.activation": ["relu", "tanh"], "model.gain": [1.0, 1.5]}),
        ("seeds", [0, 2]),
        ("seeds", 2),
        ("name", "kao2019-small.v2"),
        ("base/probes", [{"name": "jpca", "window": [-0.2, 0.2]}]),
    ],
)
def test_the_same_inputs_without_the_defect_validate(path, value, no_training):
    suite = Suite.from_dict(with_change(BASE, path, value))
    assert len(suite.runs) == len(suite.variants) * len(suite.seeds) >= 2
    assert no_training == []


def test_numpy_scalars_from_python_are_numbers(no_training):
    experiment = Experiment(
        **{
            **EXPERIMENT,
            "model": {"name": "ctrnn", "n_units": np.int64(8), "gain": np.float32(1.25)},
        }
    )
    assert experiment.config["model"]["n_units"] == 8
    assert experiment.config["model"]["gain"] == 1.25


def test_harness_detects_training(tmp_path, no_training):
    """Positive control: a valid suite reaches training, and the harness sees it."""
    kind, _ = outcome(Case("valid", "", suite=BASE), tmp_path, no_training)
    assert kind == "trained"
    assert no_training and no_training[0] == "build_model"


def figures(tmp: Path) -> dict[str, int]:
    """The issue's figures over every case (run as a script)."""
    import tempfile

    counts = {"tried": 0, "clean": 0, "unclear": 0, "trained": 0, "traceback": 0, "accepted": 0}
    patch = pytest.MonkeyPatch()
    try:
        import mechscope_bptt._trainer as bptt

        attempts: list[str] = []

        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append("x")
            raise Trained("x")

        patch.setattr(Experiment, "build_model", refused)
        patch.setattr(bptt.BPTTTrainer, "fit", refused)
        patch.setattr(bptt.BPTTTrainer, "fit_many", refused)
        for case in CASES:
            attempts.clear()
            with tempfile.TemporaryDirectory(dir=tmp) as folder:
                kind, message = outcome(case, Path(folder), attempts)
            if kind == "clean" and case.fragment not in message:
                kind = "unclear"  # one line, but it does not name what was wrong
            counts["tried"] += 1
            counts[kind] += 1
            if kind != "clean":
                print(f"{case.id}: {kind}: {message[:200]}")
    finally:
        patch.undo()
    return counts


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(figures(Path(folder)))
