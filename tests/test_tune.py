"""`ddmops tune`: studies over the real stage functions on the tiny workspace (CPU, about two minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from cli.app import app
from ddmops.ops import study as studies
from ddmops.config import load_params
from ddmops.errors import ConfigError
from ddmops.ops.tracking import default_tracking_uri
from pipelines.runner import run_stage
from pipelines.trial import method_space
from pipelines.tune import tune
from pipelines.tune_options import METHODS, TuneOptions
from tests.conftest import write_workspace

# superres trials: two images (two pruning steps), short inner loops
SUPERRES = ["restore.images=2", "restore.batch_size=1",
            "tune.superres={restore.superres.dcdp.lr: {type: float, low: 1.0e-3, high: 1.0, log: true}, "
            "restore.superres.dcdp.inner_steps: {type: int, low: 2, high: 6}}"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A tiny workspace where the stages a deblur or DCDP trial reads from have run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = write_workspace(tmp_path_factory.mktemp("tune") / "ws", SUPERRES).parent
        params = load_params(root / "params.yaml")
        for name, item in [("prepare", None), ("train-prior", "clean"), ("degrade", "deblur"),
                           ("train-prior", "deblur")]:
            run_stage(name, params, root, item=item, progress=False)
        yield root


def _tune(root: Path, **kw):
    params = load_params(root / "params.yaml")
    return tune(params, root, TuneOptions(**kw), root / "params.yaml", [])


def _trial_runs(root: Path, study: str) -> list:
    mlflow.set_tracking_uri(default_tracking_uri(root))
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`ddmops.study` = '{study}'")


def test_study_with_pruned_and_failed_trials_completes(ws):
    opts = TuneOptions(task="superres", study="prune", n_trials=5, startup_trials=2, device="cpu")
    study = studies.open_study("prune", studies.default_storage(ws), "maximize", seed=0,
                               pruner=studies.make_pruner("median", 2), heartbeat=30)
    good = {"restore.superres.dcdp.lr": 0.2, "restore.superres.dcdp.inner_steps": 6}
    for params in (good, good | {"restore.superres.dcdp.inner_steps": 5},
                   {"restore.superres.dcdp.lr": 1e-3, "restore.superres.dcdp.inner_steps": 2},  # far worse: pruned
                   {"restore.superres.dcdp.lr": 1e30, "restore.superres.dcdp.inner_steps": 6}):  # diverges (out of range, queued): fails
        study.enqueue_trial(params)
    result = _tune(ws, **{k: getattr(opts, k) for k in ("task", "study", "n_trials", "startup_trials", "device")})

    trials = result.study.get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 5 and TrialState.RUNNING not in states
    assert states[:4] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert "not a finite number" in trials[3].user_attrs["error"]
    assert set(trials[0].intermediate_values) == {0, 1}  # reported per restored image
    runs = {r.info.run_name: r for r in _trial_runs(ws, "prune")}
    assert len(runs) == 5 and len({r.data.tags["mlflow.parentRunId"] for r in runs.values()}) == 1
    assert runs["trial-0002"].data.tags["ddmops.trial_state"] == "PRUNED"
    failed = runs["trial-0003"]
    assert failed.info.status == "FAILED" and "not a finite number" in failed.data.tags["ddmops.error"]
    assert runs["trial-0000"].data.metrics["objective/psnr"] == pytest.approx(trials[0].value)
    history = mlflow.MlflowClient().get_metric_history(runs["trial-0000"].info.run_id, "objective/intermediate")
    assert {h.step: h.value for h in history} == pytest.approx(trials[0].intermediate_values)
    parent = mlflow.get_run(result.parent_run)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert parent.data.tags["ddmops.best_trial"] == str(best.number)
    assert (result.best_file.parent / "optimization_history.png").exists()
    assert yaml.safe_load(result.best_file.read_text()) == best.params
    assert not (ws / "outputs" / "tasks").exists()  # trials never write the pipeline's outputs


def test_best_params_round_trip_into_a_run(ws):
    best = ws / "tune" / "prune" / "best-params.yaml"
    if not best.exists():
        _tune(ws, task="superres", study="prune", n_trials=2, device="cpu")
    values = yaml.safe_load(best.read_text())
    params = load_params(ws / "params.yaml", [f"@{best}"])
    assert params.restore.superres.dcdp.lr == values["restore.superres.dcdp.lr"]
    assert params.restore.superres.dcdp.inner_steps == values["restore.superres.dcdp.inner_steps"]
    out = CliRunner().invoke(app, ["set-args", str(best)])
    assert out.exit_code == 0
    args = out.output.split()
    assert args[::2] == ["-S"] * len(values)
    assert load_params(ws / "params.yaml", args[1::2]) == params  # what `dvc exp run $(...)` would set
    metrics = run_stage("restore-dcdp", params, ws, item="superres", progress=False)
    best_trial = optuna.load_study(study_name="prune", storage=studies.default_storage(ws)).best_trial
    assert best_trial.params == values  # the file holds the best trial's values ...
    assert metrics["psnr/dcdp-ode"] == pytest.approx(best_trial.value, abs=1e-6)  # ... and the stage scores as it did
    run = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                         filter_string="tags.`ddmops.stage` = 'restore-dcdp-superres'")][0]
    assert float(run.data.params["restore.superres.dcdp.lr"]) == pytest.approx(values["restore.superres.dcdp.lr"])
    assert "restore.images" in run.data.params and not any(k.startswith("restore.inpainting.") for k in run.data.params)


def test_two_workers_draw_distinct_trials(ws):
    result = _tune(ws, task="superres", study="pair", n_trials=4, workers=2, startup_trials=10, device="cpu")
    trials = [t for t in result.study.get_trials() if t.state in studies.FINISHED]
    assert 4 <= len(trials) <= 5  # each worker checks the count before it starts a trial
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({r.data.tags["mlflow.parentRunId"] for r in _trial_runs(ws, "pair")}) == 1


def test_killed_study_resumes_without_losing_trials(ws):
    """SIGKILL during a trial; the rerun keeps the completed trial and runs the killed one again."""
    cmd = [sys.executable, "-m", "cli.app", "tune", "--task", "superres", "--study-name", "killed",
           "--n-trials", "3", "--heartbeat", "1", "--pruner", "none", "--no-progress", "--device", "cpu",
           "-p", str(ws / "params.yaml"), "-S", "restore.superres.dcdp.iterations=32"]  # a few seconds per trial
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = (ws / "killed-tune.log").open("w")  # a file, not a pipe: nobody reads it while the study runs
    proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT)
    storage = studies.default_storage(ws)
    poll = optuna.storages.RDBStorage(storage)  # one engine: each poll is a query, not a new connection
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # wait for: trial 0 complete, trial 1 running with its values
            time.sleep(0.1)
            try:
                trials = optuna.load_study(study_name="killed", storage=poll).get_trials()
            except KeyError:
                continue
            if (len(trials) >= 2 and trials[0].state == TrialState.COMPLETE and trials[1].state == TrialState.RUNNING
                    and len(trials[1].params) == 2):  # killed once its values are drawn
                break
        else:
            pytest.fail("the study never reached its second trial:\n" + (ws / "killed-tune.log").read_text()[-3000:])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    first = trials[0]
    time.sleep(2.5)  # past the heartbeat's grace period: the trial is stale
    out = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    after = optuna.load_study(study_name="killed", storage=storage).get_trials()
    assert after[0].state == TrialState.COMPLETE and after[0].value == first.value
    assert after[1].state == TrialState.FAIL  # the killed one, then its retry with the same params
    retry = [t for t in after if studies.retried(t) == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == after[1].params
    assert studies.counted(after) == 3 and len(after) == 4
    # a higher --n-trials continues the same study
    more = subprocess.run([*cmd[:cmd.index("3")], "4", *cmd[cmd.index("3") + 1:]], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stderr[-2000:]
    assert studies.counted(optuna.load_study(study_name="killed", storage=storage).get_trials()) == 4


def test_ddm4ip_trial_runs_learn_invert_evaluate(ws):
    result = _tune(ws, task="deblur", study="deblur-unsup", n_trials=2, objective="unsupervised", device="cpu")
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        # the objective is the learner's observation gap at its last log step, as reported to the pruner
        assert 0 < t.value < 1 and t.value == pytest.approx(t.intermediate_values[max(t.intermediate_values)])
        assert "psnr" in t.user_attrs
        assert t.intermediate_values  # the observation gap at each log step
        assert (ws / "tune" / "deblur-unsup" / f"trial-{t.number:04d}" / "restored" / "deblur" / "learned.npz").exists()
    assert not (ws / "models" / "operator").exists()
    assert not mlflow.search_registered_models()  # trials register no operator versions


@pytest.mark.parametrize("space, message", [
    ({"restore.superres.dcdp.lrx": {"type": "float", "low": 0.1, "high": 1}}, "is not a params value"),
    ({"restore.superres.dcdp.lr": {"type": "float", "low": 1, "high": 0.1}}, "must be below high"),
    ({"invert.deblur.lam": {"type": "float", "low": 1, "high": 2}}, "does not read"),
    ({"restore.superres.dcdp.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log scale needs low > 0"),
    ({"restore.superres.dcdp.schedule": {"type": "categorical", "choices": ["wavy"]}}, "is invalid"),
])
def test_bad_search_spaces_are_refused_before_any_trial(tmp_path, space, message):
    path = write_workspace(tmp_path / "ws")
    data = yaml.safe_load(path.read_text())
    data["tune"]["superres"] = space
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_params(path)
    out = CliRunner().invoke(app, ["tune", "--task", "superres", "-p", str(path)])
    assert out.exit_code == 1 and message in out.output and not (tmp_path / "ws" / "optuna.db").exists()


def test_each_method_searches_the_keys_it_runs_with(tmp_path):
    path = write_workspace(tmp_path / "ws")
    data = yaml.safe_load(path.read_text())
    data["restore"]["inpainting"]["dcdp"]["tweedie"] = {"t_start": 120, "t_end": 0}
    keys = ["restore.inpainting.dcdp.lr", "restore.inpainting.dcdp.t_start", "restore.inpainting.dcdp.ode_steps",
            "restore.inpainting.dcdp.momentum", "restore.inpainting.dcdp.tweedie.t_start",
            "restore.inpainting.dcdp.tweedie.lr", "restore.inpainting.dps.zeta",
            "restore.inpainting.noise_sigma", "restore.tile"]
    space = {k: {"type": "float", "low": 0.01, "high": 0.1} for k in keys}
    for k in ("restore.inpainting.dcdp.t_start", "restore.inpainting.dcdp.ode_steps",
              "restore.inpainting.dcdp.tweedie.t_start", "restore.tile"):
        space[k] = {"type": "int", "low": 100, "high": 400}
    data["tune"]["inpainting"] = space
    path.write_text(yaml.safe_dump(data))
    params = load_params(path)
    searched = {m: method_space(params, TuneOptions(task="inpainting", method=m)) for m in METHODS}
    common = ["restore.inpainting.noise_sigma", "restore.tile"]
    assert sorted(searched["dcdp-ode"][0]) == sorted(keys[:4] + common)
    # dcdp.t_start: params set tweedie.t_start; dcdp.lr: the trial sets tweedie.lr; ode_steps: ODE only
    assert sorted(searched["dcdp-tweedie"][0]) == sorted(["restore.inpainting.dcdp.momentum", *keys[4:6], *common])
    assert sorted(searched["dps"][0]) == sorted(["restore.inpainting.dps.zeta", *common])
    for m, (kept, unread) in searched.items():
        assert sorted([*kept, *unread]) == sorted(keys)
    # a space with nothing the method reads is refused before any study exists
    data["tune"]["inpainting"] = {"restore.inpainting.dcdp.ode_steps": {"type": "int", "low": 5, "high": 20}}
    path.write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(app, ["tune", "--task", "inpainting", "--method", "dps", "-p", str(path)])
    assert out.exit_code == 1
    assert "--method dps runs with; it does not read restore.inpainting.dcdp.ode_steps" in out.output
    assert not (tmp_path / "ws" / "optuna.db").exists()


def test_a_dcdp_study_keeps_to_one_method(ws):
    result = _tune(ws, task="superres", n_trials=1, device="cpu")
    assert result.study.study_name == "superres-dcdp-ode" and result.study.user_attrs["method"] == "dcdp-ode"
    assert (ws / "tune" / "superres-dcdp-ode" / "best-params.yaml").exists()
    with pytest.raises(ConfigError, match="tunes --method dcdp-ode"):
        _tune(ws, task="superres", study="superres-dcdp-ode", method="dcdp-tweedie", n_trials=1, device="cpu")


def test_tune_without_its_inputs_says_which_stages_to_run(tmp_path):
    path = write_workspace(tmp_path / "ws")
    out = CliRunner().invoke(app, ["tune", "--task", "psf-grid", "-p", str(path)])
    assert out.exit_code == 1 and "dvc repro train-prior-clean train-prior@psf_grid" in out.output


@pytest.mark.slow
def test_tune_in_a_fresh_dvc_project_runs_the_stages_it_needs(tmp_path):
    """As on a fresh clone: `ddmops tune` reproduces the prior it reads, then tunes."""
    from tests.test_pipeline import sh
    ws = write_workspace(tmp_path / "ws").parent
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        assert sh(cmd, ws).returncode == 0
    out = sh(["ddmops", "tune", "--task", "superres", "--n-trials", "2", "--no-progress"], ws)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "running `dvc repro train-prior-clean`" in out.stdout and "2 complete" in out.stdout
    assert "train-prior-clean" in (ws / "dvc.lock").read_text()


def test_mlproject_entry_points_name_real_stages_and_options():
    """Every MLproject entry point's command, with its default parameters, parses as a
    ddmops command whose stage and item exist (what `mlflow run -e` would execute)."""
    import shlex

    import typer

    from pipelines.runner import resolve
    project = yaml.safe_load((Path(__file__).resolve().parents[1] / "MLproject").read_text())
    command = typer.main.get_command(app)
    for name, entry in project["entry_points"].items():
        if name == "main":
            assert entry["command"] == "dvc repro"
            continue
        defaults = {k: v["default"] for k, v in entry.get("parameters", {}).items()}
        args = shlex.split(entry["command"].format(**defaults))
        assert args[0] == "ddmops"
        ctx = command.make_context("ddmops", args[1:], resilient_parsing=False)
        sub = command.get_command(ctx, args[1])
        sub_ctx = sub.make_context(args[1], args[2:])
        if args[1] == "run":
            assert sub_ctx.params["stage"] == name
            resolve(name, sub_ctx.params["item"])
        else:
            assert args[1] == name == "tune"
            TuneOptions(task=sub_ctx.params["task"].replace("-", "_"))
