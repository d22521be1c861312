"""Where this project works around Ray Tune (2.60) instead of using it as it comes.

Each entry: what Ray does, what we do instead, and the test in tests/test_ray_adaptations.py that fails once the
installed Ray no longer does it (then drop or rework the adaptation). Everything else uses Ray's public API.

1. ASHA is not saved with the experiment: after `Tuner.restore` its rungs are empty and resumed trials are judged
   against nothing. -> asha.PersistentASHA saves ASHA's whole state with ASHA's own save/restore after every
   decision, and remembers which trials it stopped.
   test_tune_saves_the_searcher_and_callbacks_but_not_the_scheduler, test_asha_state_survives_save_and_restore
2. OptunaSearch tells Optuna COMPLETE for a trial ASHA stopped, never reports the epoch it was stopped at, reports
   at `step = training_iteration`, and leaves a NaN trial RUNNING forever; its `save` uses the stdlib pickle, which
   cannot hold a define-by-run closure. -> honest_optuna.HonestOptunaSearch: COMPLETE / PRUNED / FAIL by how the
   trial ended, `step = epoch`, no NaN reaches Optuna, saved with cloudpickle.
   test_optuna_search_calls_a_stopped_trial_complete, test_optuna_search_leaves_a_nan_trial_running,
   test_tune_hides_the_stopping_result_from_the_searcher, test_optuna_search_cannot_save_a_closure,
   test_the_optuna_search_internals_we_read_exist
3. Ray copies its experiment state from a staging folder into the experiment folder in a background thread, file
   by file, in place: a killed driver can leave it torn, and Ray then silently starts the search over. By default
   it writes that state at most every ~10 s. -> snapshots.SnapshotOnEvents copies the staging state whole and
   atomically after each trial event, install_ray_snapshot puts it back before a resume; environment
   STATE_EVERY_STEP (TUNE_GLOBAL_CHECKPOINT_S=0) has Ray write it at every step.
   test_experiment_state_is_copied_in_the_background_in_place, test_experiment_state_is_written_every_10_s_by_default
4. Ctrl-C reaches Ray's workers (KeyboardInterrupt inside a trial, a traceback on the console), and Tune waits a
   hard-coded 10 s for a trial in mid-epoch before killing it. -> interrupts: workers ignore SIGINT
   (environment.WORKER_SETUP), the final clean-up kills trials at once (StopTrialsAtOnce); `ray.init` replaces
   the driver's SIGTERM handler, so sigterm_as_ctrl_c sets ours after it.
   test_ray_workers_take_sigint_and_tune_waits_10_s, test_workers_started_by_init_ray_ignore_sigint (slow)
5. On an interrupted search Tune logs notices that point at `Tuner.restore()` and call the trials in flight
   failed; a crashed trial prints its whole traceback over the progress table. -> notices: a log filter drops
   those notices (the search prints the resume command), TUNE_PRINT_ALL_TRIAL_ERRORS=0 and FailureNotices print
   one line per crash. test_the_notices_we_replace_are_still_printed_by_ray
6. Usage statistics, a new output engine that ignores our progress reporter, per-trial loggers: environment
   QUIET_ENV (no behaviour depends on it). test_the_settings_we_pass_are_read_by_ray

Not here: the MLflow tracker's reconcile on resume (tuner/tracking/trial_runs.py) makes MLflow agree with the trials as
Ray restored them; it answers a driver killed between two writes, not a Ray behaviour.

Modules are imported one by one (nothing is re-exported here): a trial's process needs environment.py only.
"""
