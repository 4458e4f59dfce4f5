"""Shared fixtures: the real composed config, shrunk, with every output under tmp_path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from omegaconf import open_dict
from sweep_helpers import kill_tree, popen

from hexsweep.cli import compose
from hexsweep.data.generate import ensure_dataset

# Training tests share one generated tiny dataset; each test's runs go to its own tmp_path.
TINY = ["debug=tiny", "trainer.progress=off"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest-xdist (-n 2, pyproject.toml): the workers share one tiny dataset, in this run's
        # shared base folder; ensure_dataset generates it under a file lock, once
        root = tmp_path_factory.getbasetemp().parent / "data"
        root.mkdir(exist_ok=True)
        return root
    return tmp_path_factory.mktemp("data")


def shared_folder(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that ``build`` fills once per test run, whichever xdist worker asks first: the
    others wait on its lock and reuse it (a module-scoped fixture would build it once per worker
    that runs one of its tests). Tests only read it; a test that writes copies it first."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's folder, shared by its workers (as data_root)
    folder = base / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed half-way
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(data_root) -> Path:
    cfg = compose(TINY + [f"paths.data={data_root}"])
    folder, _ = ensure_dataset(cfg.data, cfg.paths.data, workers=2)
    return folder


@pytest.fixture
def tiny_cfg(tmp_path, data_root, tiny_dataset):
    """Compose the real config for a tiny run; extra overrides are appended by the caller."""

    def make(*overrides: str):
        cfg = compose(TINY + [f"paths.outputs={tmp_path}", f"paths.data={data_root}", *overrides])
        with open_dict(cfg):
            pass
        return cfg

    return make


@pytest.fixture
def spawn():
    """Start processes the test owns (``sweep_helpers.popen``): when the test ends, however it
    ends, each of them and every process it started is killed, so a failed test leaves no
    driver, job server or stopped job running."""
    started = []

    def start(cmd, **kwargs):
        started.append(popen(cmd, **kwargs))
        return started[-1]

    try:
        yield start
    finally:
        for proc in started:
            kill_tree(proc, *proc.also)


# Longest first. pytest-xdist (-n 2 --dist loadgroup, pyproject.toml) hands each worker the
# next tests in collection order whenever it runs low, so a long test collected late runs on
# while the other worker has nothing left: the suite ends with one core idle. Sorting the
# longest first (LPT scheduling) makes the two workers finish together. The figures are
# seconds per test from `pytest --durations` with 2 workers on 2 cores that other work kept
# busy (about 3x CI's): only their order matters. A test not listed counts as short. The
# order changes only when a test runs, never what it checks (every test sets up its own
# state), and an xdist group stays together, ordered by its sum (its tests share one server,
# set up once).
COST_S: dict[str, float] = {
    # the xdist groups (each on one worker; pytest-xdist sends its largest units first)
    "test_postgres.py::test_two_drivers_share_one_study": 70,
    "test_ray.py::test_a_killed_ray_worker_is_recorded_crashed": 66,
    "test_ray.py::test_the_stock_ray_launcher_joins_a_running_cluster": 65,
    "test_ray.py::test_ray_sweep_records_a_failing_job_and_packs_the_node": 58,
    "test_postgres.py::test_a_killed_driver_leaves_its_trials_to_the_heartbeat": 48,
    "test_postgres.py::test_one_drivers_trials_are_pruned_against_the_others": 45,
    "test_postgres.py::test_the_storage_password_lands_in_no_file": 38,
    "test_ray.py::test_optuna_trials_on_ray_report_epochs_and_get_pruned": 17,
    # the rest
    "test_hostile_sweeps.py::test_a_second_driver_on_a_live_sweep_folder_refuses_or_waits": 170,
    "test_search.py::test_resume_continues_numbering_and_counts_the_total": 165,
    "test_search.py::test_tpe_search_runs_two_at_a_time_links_trials_and_reports": 151,
    "test_hostile_sweeps.py::test_names_and_an_unwritable_outputs_root_are_one_line_before_hydra": 115,
    "test_search.py::test_an_interrupted_search_resumed_in_its_folder_continues_its_trials": 110,
    "test_runner.py::test_a_job_that_blocks_for_ever_is_stalled_and_resume_reruns_it": 95,
    "test_runner.py::test_sigterm_while_the_report_is_written_waits_for_the_report": 89,
    "test_hostile_sweeps.py::test_chdir_true_keeps_one_slot_pool_and_one_dataset": 87,
    "test_hostile_sweeps.py::test_bad_launcher_values_are_one_line_before_any_job": 87,
    "test_scaleout.py::test_submitit_local_sweep_with_a_failing_job": 84,
    "test_search.py::test_failures_are_trials_not_crashes_and_pruning_prunes": 80,
    "test_resume.py::test_a_resume_starts_afresh_from_any_last_pt_it_cannot_use": 75,
    "test_search.py::test_multi_objective_search": 74,
    "test_sweep.py::test_interrupt_then_resume_runs_only_unfinished_jobs": 72,
    "test_tournament.py::test_tournament_of_tiny_checkpoints": 68,
    "test_search.py::test_trials_orphaned_by_a_dead_driver_are_failed_on_the_next_run": 67,
    "test_search.py::test_custom_search_space_hook": 66,
    "test_resume.py::test_an_interrupted_sweep_job_resumes_mid_training": 65,
    "test_race.py::test_a_plain_app_races_asynchronously_and_resumes_mid_race": 64,
    "test_probe.py::test_probe_finds_the_limit_packs_jobs_and_recommends": 64,
    "test_tracking.py::test_a_completed_job_ends_its_run_finished_with_its_best_checkpoint": 60,
    "test_hostile_sweeps.py::test_a_full_disk_leaves_no_job_running_and_ends_in_one_line": 57,
    "test_runner.py::test_interrupt_escalates_to_sigkill_for_a_job_deaf_to_sigint": 57,
    "test_search.py::test_too_many_failures_stop_the_sweep_with_a_message": 55,
    "test_resume.py::test_a_changed_config_starts_afresh_and_says_which_keys": 54,
    "test_runner.py::test_a_stopped_job_is_killed_as_stalled_and_frees_its_slot": 54,
    "test_runner.py::test_a_killed_driver_takes_its_jobs_down": 54,
    "test_runner.py::test_a_job_waiting_for_another_jobs_dataset_is_not_stalled": 53,
    "test_train.py::test_tiny_run_learns_and_fills_the_job_folder": 52,
    "test_sweep.py::test_raising_and_killed_jobs_do_not_stop_the_sweep": 51,
    "test_race.py::test_under_another_launcher_the_race_runs_in_batches": 46,
    "test_tracking.py::test_a_parallel_sweep_logs_every_job_to_one_sqlite_store": 46,
    "test_aggregate.py::test_oom_is_recorded_and_retried_at_half_batch": 45,
    "test_search.py::test_a_bad_pruner_setting_is_one_line_before_any_trial": 43,
    "test_resume.py::test_a_preempted_submitit_job_saves_at_a_step_and_is_requeued_where_it_stopped": 41,
    "test_optuna_any_app.py::test_gp_sampler_preset": 41,
    "test_calibration.py::test_strength_objective_and_detail_metrics_in_a_real_run": 40,
    "test_sweep.py::test_other_hydra_launchers_keep_folders_slots_and_report": 39,
    "test_tournament.py::test_a_tournament_of_single_runs_skips_damaged_checkpoints_by_name": 38,
    "test_aggregate.py::test_nan_objective_is_a_failed_job": 37,
    "test_runner.py::test_a_second_interrupt_kills_at_once": 37,
    "test_runner.py::test_the_sqlite_search_that_deadlocked_finishes": 36,
    "test_tracking.py::test_an_unreachable_mlflow_server_warns_once_and_the_job_goes_on": 35,
    "test_search.py::test_any_rdb_url_works_and_optunas_cli_reads_it": 33,
    "test_tracking.py::test_tensorboard_event_files_hold_the_scalars_and_the_hparams": 33,
    "test_app_protocol.py::test_an_interrupted_job_pauses_its_trial_and_a_resume_continues_it_in_the_same_trial": 31,
    "test_tracking.py::test_a_failing_job_ends_its_mlflow_run_failed_and_its_hparams_session_failed": 31,
    "test_optuna_any_app.py::test_storage_null_is_a_fresh_in_memory_study_every_run": 31,
    "test_resume.py::test_every_job_records_what_ran_and_analyze_diffs_two_jobs": 30,
    "test_race.py::test_a_race_whose_every_job_fails_exits_1_in_one_line": 30,
    "test_sweep.py::test_same_second_sweeps_get_their_own_folders": 29,
    "test_search.py::test_trials_that_cannot_start_count_as_failures": 29,
    "test_resume.py::test_under_submitit_sigterm_saves_at_the_next_step_and_training_goes_on": 29,
    "test_train.py::test_other_objective_metric_and_direction": 28,
    "test_optuna_any_app.py::test_launcher_values_are_refused_under_a_search_as_under_a_list_launch": 27,
    "test_resume.py::test_sigterm_saves_the_state_and_resume_ends_exactly_as_an_uninterrupted_run": 27,
    "test_train.py::test_early_stopping_restores_the_best_weights": 24,
    "test_sweep.py::test_a_bad_value_stops_the_sweep_before_any_job": 22,
    "test_runner.py::test_a_closed_terminal_sighup_ends_the_sweep_like_sigterm": 21,
    "test_search.py::test_eight_concurrent_writers_share_the_default_storage": 21,
    "test_optuna_any_app.py::test_a_plain_app_is_optimised_from_its_return_value": 21,
    "test_app_protocol.py::test_a_dead_job_is_settled_by_its_app_and_its_trial_fails_with_the_apps_reason": 20,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def unit(item: pytest.Item) -> str:
        group = item.get_closest_marker("xdist_group")
        return f"group:{group.args[0]}" if group else item.nodeid

    def cost(item: pytest.Item) -> float:
        return COST_S.get(f"{item.path.name}::{item.originalname}", 30.0 if item.get_closest_marker("slow") else 1.0)

    unit_cost: dict[str, float] = {}
    for item in items:
        unit_cost[unit(item)] = unit_cost.get(unit(item), 0.0) + cost(item)
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-unit_cost[unit(item)], unit(item), order[id(item)]))
