"""The guidance search (``autoguide.eval.search``): the space and its errors, the optimum of a
cheap analytic objective, the share of evaluations that successive halving saves, two worker
processes on one SQLite / journal study, a SIGKILLed worker's trial retried, the config
fingerprint, and the shared reconstruction cache (hits counted, two writers of one entry, LRU
eviction)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoguide.core.typed_settings import ConfigError
from autoguide.ema.cache import ReconstructionCache
from autoguide.ema.posthoc import PosthocEMA
from autoguide.eval.search import (
    SearchSettings,
    best_trials,
    open_study,
    run_worker,
    rungs,
    spent_images,
)
from autoguide.eval.search_space import SearchSpace
from autoguide.io import read_model_file

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
SPACE = {"weight": {"low": 1.0, "high": 5.0}, "main_std": {"low": 0.01, "high": 0.3, "scale": "log"}}


def bowl(params, images):
    """An analytic objective: optimum weight 2.5, std 0.05; a bias ``1 / images`` shared by every
    trial at one image count, like FD's small-sample bias."""
    return (params["weight"] - 2.5) ** 2 + math.log(params["main_std"] / 0.05) ** 2 + 1.0 / images


def settings(storage, budget, **extra):
    return SearchSettings(storage=storage, budget=budget, min_images=1, factor=3, max_images=9, **extra)


def journal(tmp_path, name="study.log"):
    return f"journal:{tmp_path / name}"


def test_rungs():
    assert rungs(1, 3, 9) == (1, 3, 9)
    assert rungs(100, 3, 1000) == (100, 300, 900, 1000)
    assert rungs(50, 2, 50) == (50,)


@pytest.mark.parametrize(
    "space, match",
    [
        ({"weight": {"low": 3, "high": 1}}, r"search.space.weight: empty or inverted range \[3, 1\]"),
        ({"weight": {"low": 2, "high": 2}}, r"search.space.weight: empty or inverted range"),
        ({"weight": {"low": 1}}, r"search.space.weight.high: expected a finite number"),
        ({"wieght": {"low": 1, "high": 2}}, r"search.space.wieght: unknown knob"),
        ({"weight": {"low": 1, "high": 2, "scal": "log"}}, r"search.space.weight.scal: unknown key"),
        ({"weight": {"low": 1, "high": 2, "scale": "cubic"}}, r"search.space.weight.scale: expected one of"),
        ({"main_std": {"low": 0, "high": 0.2, "scale": "log"}}, r"search.space.main_std: a log scale needs low > 0"),
        ({"weight": {"choices": []}}, r"search.space.weight: choices must be a non-empty list"),
        ({"guide_time": {"low": 0.5, "high": 2}}, r"search.space.guide_time: a fraction"),
        (
            {"sigma_lo": {"low": 0.1, "high": 5}, "sigma_hi": {"low": 2, "high": 80}},
            r"search.space.sigma_lo: its range",
        ),
        (
            {"term": {"q": {"choices": [1]}}},
            r"search.space.term.q: not an option of this guidance term; valid: \['p'\]",
        ),
        ({}, r"search.space: nothing to search"),
    ],
)
def test_space_errors(space, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpace.from_config(space, ["p"])


def test_settings_errors(tmp_path):
    with pytest.raises(
        ConfigError, match=r"search.budget=12 image evaluations is smaller than one trial through every rung"
    ):
        settings(journal(tmp_path), 12)
    with pytest.raises(ConfigError, match=r"search.rungs.min_images=20 exceeds the images per trial \(9"):
        SearchSettings(storage=journal(tmp_path), budget=100, min_images=20, max_images=9)
    with pytest.raises(ConfigError, match=r"search.sampler: expected one of"):
        settings(journal(tmp_path), 100, sampler="cma")


def test_choices_are_json_values():
    space = SearchSpace.from_config({"term": {"apg": {"choices": [None, {"eta": 0.0}]}}}, ["apg"])

    class Trial:
        def suggest_categorical(self, name, choices):
            assert choices == ["null", '{"eta":0.0}']
            return choices[1]

    assert space.suggest(Trial()) == {"term.apg": {"eta": 0.0}}
    assert space.decode({"term.apg": "null"}) == {"term.apg": None}


def test_tpe_finds_the_optimum_of_an_analytic_objective(tmp_path):
    search = settings(journal(tmp_path), 13 * 10)
    study = open_study(search, {"objective": "bowl"}, minimize=True)
    run_worker(study, SearchSpace.from_config(SPACE, []), bowl, search, tmp_path)
    best = best_trials(study, minimize=True)[0]
    assert abs(best.params["weight"] - 2.5) < 0.3 and abs(math.log(best.params["main_std"] / 0.05)) < 0.3
    assert spent_images(study) <= search.budget


def test_successive_halving_cuts_the_promised_share(tmp_path):
    """Rungs 1, 3, 9 with factor 3: a trial costs 13 images unpruned; halving keeps 1/3 of the
    trials per rung, so a trial costs 1 + 3/3 + 9/9 = 3 images on average (3/13 of the grid's
    cost) once many trials compete (the first trials of each rung are promoted more freely)."""
    search = settings(journal(tmp_path), 13 * 12, sampler="random")
    study = open_study(search, {"objective": "bowl"}, minimize=True)
    run_worker(study, SearchSpace.from_config(SPACE, []), bowl, search, tmp_path)
    trials = study.get_trials()
    reached = [sum(1 for t in trials if n in t.intermediate_values) for n in (1, 3, 9)]
    share = spent_images(study) / (13 * len(trials))
    assert reached[0] == len(trials) > reached[1] > reached[2] >= 1
    assert share <= 1.5 * 3 / 13, (share, reached)
    for t in trials:  # every trial records its metric at each rung it reached, keyed by image count
        assert sorted(t.intermediate_values) == [1, 3, 9][: len(t.intermediate_values)]
        assert t.user_attrs["images"] == sum([1, 3, 9][: len(t.intermediate_values)])


WORKER = """
import json, math, os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_eval_search import SPACE, bowl, settings
from autoguide.eval.search import open_study, run_worker
from autoguide.eval.search_space import SearchSpace
storage, budget, worker, log, slow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
def measure(params, images):
    with log.open("a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "params": params, "images": images}}) + "\\n")
    if images == 9 and slow != "-" and not Path(slow).exists():
        Path(slow).write_text(str(os.getpid()))
        time.sleep(600)  # killed here
    mine = log.parent / f"measuring-{{worker}}"
    if slow == "-" and not mine.exists():  # both workers are inside a trial at once before either goes on, so
        mine.touch()  # a worker that starts late under load still gets one: a trial holds no lock while it measures
        deadline = time.time() + 120
        while len(list(log.parent.glob("measuring-*"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
    time.sleep(0.3)
    return bowl(params, images)
search = settings(storage, budget, worker=worker, lease_s=600.0, heartbeat_s=0.5)
study = open_study(search, {{"objective": "bowl"}}, minimize=True, lock_folder=log.parent)
(log.parent / f"ready-{{worker}}").touch()
while not (log.parent / "go").exists():  # the test starts the workers together
    time.sleep(0.05)
run_worker(study, SearchSpace.from_config(SPACE, []), measure, search, log.parent)
"""


def start_worker(tmp_path, storage, budget, worker, slow="-"):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS)))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    log = tmp_path / f"measured-{worker}.jsonl"
    return subprocess.Popen([sys.executable, str(script), storage, str(budget), str(worker), str(log), slow], env=env)


def measured(tmp_path):
    return [json.loads(line) for p in sorted(tmp_path.glob("measured-*.jsonl")) for line in p.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study(tmp_path, kind):
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else journal(tmp_path)
    budget = 13 * 4
    workers = [start_worker(tmp_path, storage, budget, w) for w in (0, 1)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready-{w}").exists() for w in (0, 1)) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    assert [w.wait(timeout=240) for w in workers] == [0, 0]
    study = open_study(settings(storage, budget), {"objective": "bowl"}, minimize=True)
    trials = study.get_trials()
    by_pid = {}
    for row in measured(tmp_path):
        by_pid.setdefault(json.dumps(row["params"], sort_keys=True), set()).add(row["pid"])
    assert len(by_pid) == len(trials)  # every trial's settings measured ...
    assert all(len(pids) == 1 for pids in by_pid.values())  # ... by one worker only
    assert len({pid for pids in by_pid.values() for pid in pids}) == 2  # both worked
    spent = spent_images(study)
    assert spent == sum(r["images"] for r in measured(tmp_path)) and budget - 13 < spent <= budget
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)


def test_killed_worker_trial_is_failed_and_retried(tmp_path):
    storage, budget = journal(tmp_path), 13 * 4
    flag = tmp_path / "killed-at"
    (tmp_path / "go").touch()
    victim = start_worker(tmp_path, storage, budget, 0, slow=str(flag))
    deadline = time.time() + 120
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert flag.exists(), "the worker never reached the slow rung"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    study = open_study(settings(storage, budget), {"objective": "bowl"}, minimize=True)
    killed = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert len(killed) == 1
    rerun = start_worker(tmp_path, storage, budget, 0, slow=str(flag))  # the flag exists: no sleep now
    assert rerun.wait(timeout=240) == 0
    trials = study.get_trials()
    assert trials[killed[0].number].state.name == "FAIL"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retry) == 1 and retry[0].params == killed[0].params and retry[0].state.name in ("COMPLETE", "PRUNED")
    assert all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    assert spent_images(study) <= budget


def test_study_refuses_another_config(tmp_path):
    search = settings(journal(tmp_path), 100)
    open_study(search, {"grid": {"weight": [1.0]}, "select": "toy_logp"}, minimize=False)
    open_study(search, {"grid": {"weight": [1.0]}, "select": "toy_logp"}, minimize=False)  # the same: joins
    with pytest.raises(
        ConfigError,
        match=r"search.study='search' in journal:.* was started with another config: "
        r"grid.weight \(\[1.0\] -> \[2.0\]\)",
    ):
        open_study(search, {"grid": {"weight": [2.0]}, "select": "toy_logp"}, minimize=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    from test_eval_sweep import make_run

    return make_run(tmp_path_factory.mktemp("cache-run"), 8, 3)


def test_cache_hits_and_never_rebuilds(run, tmp_path, monkeypatch):
    cache = ReconstructionCache(tmp_path / "cache")
    ema = PosthocEMA(run)
    first = cache.get(ema, 0.08, 0.5)
    assert (cache.builds, cache.hits) == (1, 0)
    monkeypatch.setattr(PosthocEMA, "write", lambda *a, **k: pytest.fail("rebuilt a cached EMA"))
    again = ReconstructionCache(tmp_path / "cache")  # another worker of the same cache
    assert again.get(PosthocEMA(run), 0.08, 0.5) == first and (again.builds, again.hits) == (0, 1)
    assert again.get(ema, 0.08, 2000) == first  # the same time as an image count: the same entry


def test_cache_keys_differ_by_time_std_and_solver_code(run, tmp_path, monkeypatch):
    cache = ReconstructionCache(tmp_path / "cache")
    ema = PosthocEMA(run)
    keys = {cache.key(ema, 0.08, 0.5)[0], cache.key(ema, 0.09, 0.5)[0], cache.key(ema, 0.08, None)[0]}
    monkeypatch.setattr("autoguide.ema.cache.solver_code", lambda: "other")
    keys.add(cache.key(ema, 0.08, 0.5)[0])
    assert len(keys) == 4


def test_cache_builds_the_missing_stds_of_one_request_in_one_pass(run, tmp_path, monkeypatch):
    cache = ReconstructionCache(tmp_path / "cache")
    ema = PosthocEMA(run)
    middle = cache.get(ema, 0.07, None)
    writes = []
    write = PosthocEMA.write
    monkeypatch.setattr(
        PosthocEMA, "write", lambda self, stds, *a, **k: writes.append(list(stds)) or write(self, stds, *a, **k)
    )
    nimg, files = cache.files(ema, [0.06, 0.07, 0.08], None)
    assert writes == [[0.06, 0.08]] and files[0.07] == middle and (cache.builds, cache.hits) == (3, 1)
    assert len({p.parent for p in files.values()}) == 3  # one entry per std
    for std, path in files.items():
        assert read_model_file(path)[1]["ema_std"] == std and read_model_file(path)[1]["nimg"] == nimg
        assert path.parent.name == cache.key(ema, std, None)[0]


CACHE_WORKER = """
import json, sys
from autoguide.ema.cache import ReconstructionCache
from autoguide.ema.posthoc import PosthocEMA
cache = ReconstructionCache(sys.argv[1])
path = cache.get(PosthocEMA(sys.argv[2]), 0.07, None)
print(json.dumps({"path": str(path), "builds": cache.builds, "hits": cache.hits}))
"""


def test_cache_survives_two_workers_writing_one_entry(run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CACHE_WORKER, str(tmp_path / "cache"), str(run)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["builds"] for r in results) == [0, 1] and sorted(r["hits"] for r in results) == [0, 1]
    state, card = __import__("autoguide.io", fromlist=["read_model_file"]).read_model_file(results[0]["path"])
    assert card["ema_std"] == 0.07 and state
    assert not list((tmp_path / "cache").glob("*/*.tmp")) and not list((tmp_path / "cache").glob("*/.autoguide-claim*"))


def test_cache_evicts_least_recently_used(run, tmp_path):
    cache = ReconstructionCache(tmp_path / "cache")
    ema = PosthocEMA(run)
    a, b = cache.get(ema, 0.06, None), cache.get(ema, 0.07, None)
    size = a.stat().st_size
    os.utime(a, (time.time() - 100, time.time() - 100))
    os.utime(b, (time.time() - 50, time.time() - 50))
    cache.get(ema, 0.06, None)  # a is used again: b is now the least recently used
    capped = ReconstructionCache(tmp_path / "cache", max_bytes=int(2.5 * size))
    c = capped.get(ema, 0.08, None)
    assert a.exists() and c.exists() and not b.exists()


TOY_SEARCH = [
    "search.rungs.min_images=20",
    "search.rungs.factor=2",
    "seeds=0-79",
    "metrics=toy2d",
    "metrics.toy.num_density_samples=2000",
    "select=toy_logp",
    "sampler.num_steps=3",
    "class_labels=0",
    "device=cpu",
    "grid.main_std=[0.1]",
    "search.space.weight={low:1,high:3}",
    "search.space.guide_std={choices:[0.05,0.1]}",
]
"""A toy search's overrides: rungs of 20, 40 and 80 images, exact metrics, weight and guide EMA searched."""


def search_cfg(runs, out, *extra):
    from autoguide.apps.config_tree import compose

    main, guide = runs
    return compose(
        "sweep",
        [
            f"main.run={main}",
            f"guides.runs=[{guide}]",
            "search=tpe",
            "search.budget=300",
            *TOY_SEARCH,
            f"output.dir={out}",
            "search.space.guide_time={low:0.3,high:1}",
            "search.space.term={apg:{choices:[null,{eta:0.0}]}}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    from test_eval_sweep import make_run

    root = tmp_path_factory.mktemp("search-runs")
    return make_run(root / "main", 16, 0), make_run(root / "guide", 8, 1)


def test_search_end_to_end(runs, tmp_path):
    """A toy search through ``autoguide-sweep search=tpe`` (debug-sized): rungs of 20, 40 and 80
    images, a budget of two whole trials; the best re-measured on held-out seeds equals
    ``autoguide-eval`` of its models; rerunning continues the study (nothing left to run)."""
    import csv

    from autoguide.apps.config_tree import compose
    from autoguide.apps.evaluate import run as evaluate
    from autoguide.apps.sweep import run as sweep

    out = tmp_path / "search"
    best = sweep(search_cfg(runs, out))
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) >= 2 and {"rung_20", "rung_40", "rung_80", "weight", "guide_std", "term.apg"} <= set(rows[0])
    assert sum(int(r["images"]) for r in rows) == best["images_spent"] <= 300
    for name in ("history.png", "slice.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "best.json").read_text())
    assert (
        saved["holdout"]["seeds"] == "80-159" and saved["search"]["seeds"] == "0-79" and saved["rungs"] == [20, 40, 80]
    )
    assert saved["models"]["guide"]["sha256"] and saved["cache"]["builds"] >= 2
    setting, apg = saved["setting"], saved["params"]["term.apg"]
    direct = evaluate(
        compose(
            "eval",
            [
                f"model={saved['models']['main']['file']}",
                f"guide={saved['models']['guide']['file']}",
                f"guidance.weight={setting['weight']}",
                "guidance.apg=" + ("null" if apg is None else f"{{eta:{apg['eta']}}}"),
                "metrics=toy2d",
                "metrics.toy.num_density_samples=2000",
                "seeds=80-159",
                "sampler.num_steps=3",
                "class_labels=0",
                "device=cpu",
                f"output.dir={tmp_path / 'direct'}",
                "preview_images=0",
            ],
        )
    )
    assert saved["holdout"]["value"] == pytest.approx(direct["metrics"]["toy_logp"], rel=1e-9)

    again = sweep(search_cfg(runs, out))  # rerun: the study continues; its budget is spent, nothing is measured
    assert again["trial"] == best["trial"] and again["holdout"] == best["holdout"] and again["cache"]["builds"] == 0
    with pytest.raises(ConfigError, match=r"was started with another config: search.space.weight.high \(3 -> 4\)"):
        sweep(search_cfg(runs, out, "search.space.weight={low:1,high:4}"))


def test_search_cli_errors(runs, tmp_path):
    from autoguide.apps.sweep import run as sweep

    with pytest.raises(ConfigError, match=r"search.space.weight: empty or inverted range \[3, 1\]"):
        sweep(search_cfg(runs, tmp_path, "search.space.weight={low:3,high:1}"))
    with pytest.raises(ConfigError, match=r"search.space.term.pp: not an option of this guidance term"):
        sweep(search_cfg(runs, tmp_path, "search.space.term=null", "search.space.term={pp:{low:0,high:1}}"))
    with pytest.raises(ConfigError, match=r"search.budget=100 image evaluations is smaller than one trial"):
        sweep(search_cfg(runs, tmp_path, "search.budget=100"))
    with pytest.raises(ConfigError, match=r"grid.weight has 5 values; a search takes one fixed value"):
        sweep(search_cfg(runs, tmp_path, "search.space.weight=null"))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    main, _guide = runs
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoguide.apps.sweep",
            f"main.run={main}",
            "search=tpe",
            "search.budget=300",
            "metrics=toy2d",
            "select=toy_logp",
            "seeds=0-79",
            "grid.weight=[2]",
            "+search.space.wieght={low:1,high:2}",
            f"output.dir={tmp_path}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "search.space.wieght: unknown knob; search one of "
            "['main_std', 'guide_std', 'guide_time', 'weight', 'sigma_lo', "
            "'sigma_hi', 'term.<option>']"
        )
    )


def test_infeasible_settings_fail_without_retry(tmp_path):
    """A setting that cannot be measured fails its trial without a retry and costs no budget;
    twenty in a row stop the worker with the reason."""
    from autoguide.eval.search import Infeasible

    def measure(params, images):
        if params["weight"] > 3.0:
            raise Infeasible(f"weight {params['weight']:.2f} cannot be represented")
        return bowl(params, images)

    search = settings(journal(tmp_path), 13 * 4, sampler="random")
    study = open_study(search, {"objective": "bowl"}, minimize=True)
    run_worker(study, SearchSpace.from_config(SPACE, []), measure, search, tmp_path)
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert failed and all("infeasible" in t.user_attrs and t.params["weight"] > 3 for t in failed)
    assert not any("retry_of" in t.user_attrs for t in study.get_trials())
    assert spent_images(study) > 13 * 3
    always = settings(journal(tmp_path, "always.log"), 13 * 4, sampler="random")
    study = open_study(always, {"objective": "none"}, minimize=True)
    with pytest.raises(
        ConfigError, match=r"search.space: 20 proposed settings in a row could not be measured, the last: weight"
    ):
        run_worker(
            study, SearchSpace.from_config(SPACE, []), lambda p, n: measure({**p, "weight": 4.0}, n), always, tmp_path
        )


@pytest.mark.parametrize("sampler, pruner", [("gp", "hyperband"), ("random", "none")])
def test_other_samplers_and_pruners_run_within_budget(tmp_path, sampler, pruner):
    """The GP sampler with Hyperband stops trials early; without a pruner every trial reaches
    the last rung; both stay within the budget."""
    search = settings(journal(tmp_path), 13 * 5, sampler=sampler, pruner=pruner, startup_trials=3)
    study = open_study(search, {"objective": "bowl"}, minimize=True)
    run_worker(study, SearchSpace.from_config(SPACE, []), bowl, search, tmp_path)
    states = {t.state.name for t in study.get_trials()}
    assert spent_images(study) <= search.budget and "COMPLETE" in states
    assert ("PRUNED" in states) == (pruner != "none")
